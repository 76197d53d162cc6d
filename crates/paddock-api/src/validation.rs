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

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
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
}
