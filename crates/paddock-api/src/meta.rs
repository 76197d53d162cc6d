//! `metadata` validated as Kubernetes validates it on every kind
//! (`ValidateObjectMeta` in `apimachinery`): label keys and values,
//! annotation keys and their total size, finalizer names, owner
//! references and `generateName`. Names themselves follow each kind's rule
//! and are checked with the kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validation::{FieldError, FieldErrorKind, check_dns_subdomain};

/// The most that a object's annotations may hold, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const NAME_PART_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', \
     and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or \
     '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric \
     characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
     'MyValue', or 'my_value', or '12345', regex used for validation is \
     '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// Why `value` is not a qualified name (`[prefix/]name`), if it is not: the
/// messages Kubernetes gives, with the value quoted first.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            out.push("prefix part must be non-empty".to_owned());
        } else {
            let mut e = Vec::new();
            check_dns_subdomain("prefix", prefix, &mut e);
            out.extend(e.into_iter().map(|e| format!("prefix part {}", e.message)));
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            out.push(format!(
                "name part must be no more than {QUALIFIED_NAME_MAX} characters"
            ));
        }
        if !is_name_part(name) {
            out.push(NAME_PART_RULE.to_owned());
        }
    }
    out
}

fn invalid(field: &str, value: &str, why: impl std::fmt::Display) -> FieldError {
    FieldError::invalid(field, format!("{value:?}: {why}"))
}

/// Every way `meta` breaks Kubernetes' rules for object metadata.
pub fn validate_object_meta(meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in meta.labels.iter().flatten() {
        for why in qualified_name_errors(k) {
            errs.push(invalid("metadata.labels", k, why));
        }
        if v.len() > LABEL_VALUE_MAX {
            errs.push(invalid(
                "metadata.labels",
                v,
                format!("must be no more than {LABEL_VALUE_MAX} characters"),
            ));
        }
        if !v.is_empty() && !is_name_part(v) {
            errs.push(invalid("metadata.labels", v, LABEL_VALUE_RULE));
        }
    }
    let mut annotation_bytes = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        for why in qualified_name_errors(&k.to_lowercase()) {
            errs.push(invalid("metadata.annotations", k, why));
        }
        annotation_bytes += k.len() + v.len();
    }
    if annotation_bytes > MAX_ANNOTATIONS_BYTES {
        errs.push(FieldError::new(
            "metadata.annotations",
            FieldErrorKind::TooLong,
            format!("Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"),
        ));
    }
    for f in meta.finalizers.iter().flatten() {
        for why in qualified_name_errors(f) {
            errs.push(invalid("metadata.finalizers", f, why));
        }
    }
    let mut controllers = Vec::new();
    for (i, r) in meta.owner_references.iter().flatten().enumerate() {
        let field = |f: &str| format!("metadata.ownerReferences[{i}].{f}");
        for (f, value, what) in [
            ("apiVersion", &r.api_version, "version"),
            ("kind", &r.kind, "kind"),
            ("name", &r.name, "name"),
            ("uid", &r.uid, "uid"),
        ] {
            if value.is_empty() {
                errs.push(invalid(
                    &field(f),
                    value,
                    format!("{what} must not be empty"),
                ));
            }
        }
        if r.controller == Some(true) {
            controllers.push(r.name.clone());
        }
    }
    if controllers.len() > 1 {
        errs.push(invalid(
            "metadata.ownerReferences",
            "true",
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
    if let Some(g) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        // As Kubernetes does, a trailing '-' stands for the suffix to come.
        let masked = match g.strip_suffix('-') {
            Some(head) => format!("{head}a"),
            None => g.to_owned(),
        };
        let mut e = Vec::new();
        check_dns_subdomain("metadata.generateName", &masked, &mut e);
        errs.extend(
            e.into_iter()
                .map(|e| FieldError::new(e.field, e.kind, e.message.replace(&masked, g))),
        );
    }
    errs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn fields(m: &ObjectMeta) -> Vec<String> {
        validate_object_meta(m)
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn good_metadata_passes() {
        let m = ObjectMeta {
            labels: map(&[
                ("app", "web"),
                ("paddock.io/cluster", "demo"),
                ("empty", ""),
            ]),
            annotations: map(&[("kubectl.kubernetes.io/last-applied-configuration", "{}")]),
            finalizers: Some(vec!["paddock.io/drain".into(), "kubernetes".into()]),
            generate_name: Some("demo-".into()),
            ..ObjectMeta::default()
        };
        assert!(
            validate_object_meta(&m).is_empty(),
            "{:?}",
            validate_object_meta(&m)
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        for (m, field, why) in [
            (
                ObjectMeta {
                    labels: map(&[("bad key", "v")]),
                    ..ObjectMeta::default()
                },
                "metadata.labels",
                "name part must consist",
            ),
            (
                ObjectMeta {
                    labels: map(&[("Upper.Case/x", "v")]),
                    ..ObjectMeta::default()
                },
                "metadata.labels",
                "prefix part",
            ),
            (
                ObjectMeta {
                    labels: map(&[("k", "not ok!")]),
                    ..ObjectMeta::default()
                },
                "metadata.labels",
                "a valid label must be an empty string",
            ),
            (
                ObjectMeta {
                    labels: map(&[("k", &"v".repeat(64))]),
                    ..ObjectMeta::default()
                },
                "metadata.labels",
                "no more than 63",
            ),
            (
                ObjectMeta {
                    annotations: map(&[("a/b/c", "v")]),
                    ..ObjectMeta::default()
                },
                "metadata.annotations",
                "name part",
            ),
            (
                ObjectMeta {
                    annotations: map(&[("big", &"x".repeat(MAX_ANNOTATIONS_BYTES))]),
                    ..ObjectMeta::default()
                },
                "metadata.annotations",
                "at most 262144 bytes",
            ),
            (
                ObjectMeta {
                    finalizers: Some(vec!["no spaces/allowed here".into()]),
                    ..ObjectMeta::default()
                },
                "metadata.finalizers",
                "name part",
            ),
            (
                ObjectMeta {
                    generate_name: Some("Bad_".into()),
                    ..ObjectMeta::default()
                },
                "metadata.generateName",
                "\"Bad_\"",
            ),
        ] {
            let errs = validate_object_meta(&m);
            assert!(
                errs.iter()
                    .any(|e| e.field == field && e.message.contains(why)),
                "{field} / {why}: {errs:?}"
            );
        }
    }

    #[test]
    fn owner_references_are_whole_and_have_one_controller() {
        let owner = |name: &str, uid: &str, controller: bool| OwnerReference {
            api_version: "paddock.io/v1alpha1".into(),
            kind: "Cluster".into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        };
        let one = ObjectMeta {
            owner_references: Some(vec![owner("a", "1", true), owner("b", "2", false)]),
            ..ObjectMeta::default()
        };
        assert!(fields(&one).is_empty());
        let two = ObjectMeta {
            owner_references: Some(vec![owner("a", "1", true), owner("b", "2", true)]),
            ..ObjectMeta::default()
        };
        assert_eq!(fields(&two), ["metadata.ownerReferences"]);
        let no_uid = ObjectMeta {
            owner_references: Some(vec![owner("a", "", false)]),
            ..ObjectMeta::default()
        };
        assert_eq!(fields(&no_uid), ["metadata.ownerReferences[0].uid"]);
    }
}
