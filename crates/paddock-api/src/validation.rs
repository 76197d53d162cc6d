//! Field-level validation errors, shaped like Kubernetes' `StatusCause`s so
//! the API server can return them as a `422 Invalid` without translation.

use std::fmt;

/// Why a field was rejected (the `reason` of a Kubernetes `StatusCause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    TooLong,
    Forbidden,
}

impl FieldErrorKind {
    /// The `reason` string Kubernetes uses for this kind.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::TooLong => "FieldValueTooLong",
            Self::Forbidden => "FieldValueForbidden",
        }
    }
}

/// One rejected field: its path (`spec.controlPlane.replicas`), the kind of
/// problem, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, kind: FieldErrorKind, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Invalid, message)
    }
    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Required, "Required value")
    }
}

impl FieldError {
    /// The message in Kubernetes' words: `Invalid value: -1: must be …`,
    /// `Unsupported value: …`, `Required value` (as `field.Error` says them).
    pub fn detail(&self) -> String {
        let words = match self.kind {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::Forbidden => "Forbidden",
        };
        if self.message.starts_with(words) {
            self.message.clone()
        } else if self.message.is_empty() {
            words.to_owned()
        } else {
            format!("{words}: {}", self.message)
        }
    }

    /// A decoder's complaint about `field` (serde's words) said as
    /// Kubernetes says it: a negative number for an unsigned field, a value
    /// of the wrong type, a missing field, a variant that does not exist.
    pub fn from_decoder(field: &str, message: &str) -> Self {
        let ticked = |s: &str| -> Option<String> {
            let start = s.find('`')? + 1;
            let end = start + s[start..].find('`')?;
            Some(s[start..end].to_owned())
        };
        if let Some(rest) = message.strip_prefix("invalid value: integer ")
            && let Some(n) = ticked(rest)
        {
            let expected = rest.rsplit("expected ").next().unwrap_or("");
            let why = if n.starts_with('-') && expected.starts_with('u') {
                "must be greater than or equal to 0".to_owned()
            } else {
                format!("must be {expected}")
            };
            return Self::invalid(field, format!("{n}: {why}"));
        }
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let value = ticked(got)
                .or_else(|| {
                    let q = got.find('"')?;
                    Some(got[q..].to_owned())
                })
                .unwrap_or_else(|| got.to_owned());
            let ty = match expected {
                e if e.starts_with('u') || e.starts_with('i') || e.contains("integer") => "integer",
                e if e.starts_with('f') || e.contains("number") => "number",
                e if e.contains("string") || e.contains("quantity") => "string",
                e if e.contains("bool") => "boolean",
                e if e.contains("sequence") || e.contains("array") || e.contains("list") => "array",
                _ => "object",
            };
            return Self::invalid(field, format!("{value}: must be of type {ty}"));
        }
        if let Some(rest) = message.strip_prefix("missing field ")
            && let Some(name) = ticked(rest)
        {
            let at = if field == "<root>" || field.is_empty() {
                name
            } else {
                format!("{field}.{name}")
            };
            return Self::required(at);
        }
        if let Some(rest) = message.strip_prefix("unknown variant ")
            && let Some(got) = ticked(rest)
        {
            let supported: Vec<String> = rest
                .split_once("expected ")
                .map(|(_, e)| {
                    e.split('`')
                        .enumerate()
                        .filter(|(i, _)| i % 2 == 1)
                        .map(|(_, v)| format!("{v:?}"))
                        .collect()
                })
                .unwrap_or_default();
            return Self::new(
                field,
                FieldErrorKind::NotSupported,
                format!("{got:?}: supported values: {}", supported.join(", ")),
            );
        }
        Self::invalid(field, message)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.detail())
    }
}

/// Semantic validation of a resource beyond what its Rust type already
/// guarantees. Returns every problem found, not only the first.
pub trait Validate {
    fn validate(&self) -> Vec<FieldError>;
}

/// Checks a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max`).
pub fn check_dns_label(field: &str, value: &str, max: usize, errs: &mut Vec<FieldError>) {
    if value.is_empty() {
        errs.push(FieldError::required(field));
        return;
    }
    if value.len() > max {
        errs.push(FieldError::new(
            field,
            FieldErrorKind::TooLong,
            format!("must be no more than {max} characters"),
        ));
    }
    let bytes = value.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ok_ends = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !ok_chars || !ok_ends {
        errs.push(FieldError::invalid(
            field,
            format!(
                "{value:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric \
                 characters or '-', and must start and end with an alphanumeric character"
            ),
        ));
    }
}

/// Checks a DNS-1123 subdomain (labels joined by dots, at most 253).
pub fn check_dns_subdomain(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if value.is_empty() {
        errs.push(FieldError::required(field));
        return;
    }
    if value.len() > 253 {
        errs.push(FieldError::new(
            field,
            FieldErrorKind::TooLong,
            "must be no more than 253 characters",
        ));
        return;
    }
    let mut inner = Vec::new();
    for label in value.split('.') {
        check_dns_label(field, label, 63, &mut inner);
    }
    if !inner.is_empty() {
        errs.push(FieldError::invalid(
            field,
            format!(
                "{value:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let mut e = Vec::new();
        check_dns_label("n", "demo-1", 63, &mut e);
        assert!(e.is_empty());
        for bad in ["Demo", "-a", "a-", "a_b", ""] {
            let mut e = Vec::new();
            check_dns_label("n", bad, 63, &mut e);
            assert!(!e.is_empty(), "{bad} accepted");
        }
        let mut e = Vec::new();
        check_dns_label("n", &"a".repeat(64), 63, &mut e);
        assert_eq!(e[0].kind, FieldErrorKind::TooLong);
    }

    #[test]
    fn subdomains() {
        let mut e = Vec::new();
        check_dns_subdomain("n", "a.b-c.d", &mut e);
        assert!(e.is_empty());
        check_dns_subdomain("n", "a..b", &mut e);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn decoder_errors_in_kubernetes_words() {
        let e = FieldError::from_decoder(
            "spec.controlPlane.replicas",
            "invalid value: integer `-1`, expected u32",
        );
        assert_eq!(
            e.to_string(),
            "spec.controlPlane.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        let e = FieldError::from_decoder("spec.cpu", "invalid type: string \"two\", expected u32");
        assert_eq!(
            e.to_string(),
            "spec.cpu: Invalid value: \"two\": must be of type integer"
        );
        let e = FieldError::from_decoder("spec.nodePools[0]", "missing field `name`");
        assert_eq!(e.to_string(), "spec.nodePools[0].name: Required value");
        assert_eq!(e.kind, FieldErrorKind::Required);
        let e = FieldError::from_decoder(
            "spec.role",
            "unknown variant `boss`, expected `controlPlane` or `worker`",
        );
        assert_eq!(
            e.to_string(),
            "spec.role: Unsupported value: \"boss\": supported values: \"controlPlane\", \"worker\""
        );
        let e = FieldError::invalid("metadata.name", "Invalid value: \"x\": bad");
        assert_eq!(e.detail(), "Invalid value: \"x\": bad", "not said twice");
    }
}
