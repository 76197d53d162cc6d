//! The resources this server serves: names, scope, how objects are decoded,
//! defaulted and validated, which fields can be selected, and table columns.

use std::marker::PhantomData;
use std::sync::LazyLock;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use paddock_api::validation::FieldErrorKind;
use paddock_api::validation::{check_dns_label, check_dns_subdomain};
use paddock_api::{Cluster, FieldError, Host, Machine, MachineImage, Validate};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::table::{Column, columns};

/// Decoding, defaulting and validation of one kind's objects.
pub trait Codec: Send + Sync {
    /// Decodes `obj` into the kind's type (filling defaults), validates it and
    /// returns its normalized JSON. Unknown fields are dropped.
    fn normalize(&self, obj: Value) -> Result<Value, Vec<FieldError>>;
    /// The kind's OpenAPI v3 schema, inlined.
    fn schema(&self) -> Value;
}

struct Typed<T> {
    validate: fn(&T) -> Vec<FieldError>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Serialize + JsonSchema> Codec for Typed<T> {
    fn normalize(&self, obj: Value) -> Result<Value, Vec<FieldError>> {
        // Metadata by Kubernetes' rules, whatever the kind. (Metadata that
        // does not even decode is reported with its path below.)
        let mut errs = obj
            .get("metadata")
            .and_then(|m| serde_json::from_value::<ObjectMeta>(m.clone()).ok())
            .map(|m| paddock_api::meta::validate_object_meta(&m))
            .unwrap_or_default();
        let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "<root>".to_owned()
            } else {
                path
            };
            vec![FieldError::from_decoder(
                &field,
                &e.into_inner().to_string(),
            )]
        })?;
        errs.extend((self.validate)(&typed));
        if !errs.is_empty() {
            return Err(errs);
        }
        serde_json::to_value(&typed).map_err(|e| vec![FieldError::invalid("<root>", e.to_string())])
    }

    fn schema(&self) -> Value {
        crate::openapi::inline_schema::<T>()
    }
}

fn typed<T: DeserializeOwned + Serialize + JsonSchema + 'static>(
    validate: fn(&T) -> Vec<FieldError>,
) -> Box<dyn Codec> {
    Box::new(Typed {
        validate,
        _t: PhantomData,
    })
}

/// One served resource.
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Has a `/status` subresource: the main resource ignores status changes.
    pub status_subresource: bool,
    /// Field paths usable in field selectors, beyond `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
    pub codec: Box<dyn Codec>,
    pub columns: Vec<Column>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Store key prefix for all objects, or those of one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{g}/{}/{ns}/", self.plural),
            _ => format!("/registry/{g}/{}/", self.plural),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    pub fn subject(&self, name: &str) -> crate::error::Subject {
        crate::error::Subject {
            group: self.group.to_owned(),
            kind: self.kind.to_owned(),
            resource: self.plural.to_owned(),
            name: name.to_owned(),
        }
    }
}

fn name_is_subdomain(meta_name: Option<&String>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(n) = meta_name {
        check_dns_subdomain("metadata.name", n, &mut errs);
    }
    errs
}

fn validate_machine(m: &Machine) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(m.metadata.name.as_ref());
    errs.extend(m.validate());
    errs
}

fn validate_host(h: &Host) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(h.metadata.name.as_ref());
    errs.extend(h.validate());
    errs
}

fn validate_image(i: &MachineImage) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(i.metadata.name.as_ref());
    errs.extend(i.validate());
    errs
}

fn validate_namespace(n: &Namespace) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(name) = &n.metadata.name {
        check_dns_label("metadata.name", name, 63, &mut errs);
    }
    errs
}

fn validate_secret(s: &Secret) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(s.metadata.name.as_ref());
    let size: usize = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len())
        .chain(
            s.string_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len()),
        )
        .sum();
    if size > MAX_SECRET_BYTES {
        errs.push(FieldError::new(
            "data",
            FieldErrorKind::TooLong,
            format!("Too long: must have at most {MAX_SECRET_BYTES} bytes"),
        ));
    }
    for key in s
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(s.string_data.iter().flat_map(|d| d.keys()))
    {
        let ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !ok {
            errs.push(FieldError::invalid(
                format!("data[{key}]"),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    errs
}

/// The most a Secret may hold (Kubernetes' `MaxSecretSize`).
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

fn validate_event(e: &Event) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(e.metadata.name.as_ref());
    let ns = e.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(about) = e.involved_object.namespace.as_deref()
        && !about.is_empty()
        && !ns.is_empty()
        && about != ns
    {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            format!("{about:?}: does not match event.namespace"),
        ));
    }
    if let Some(t) = e.type_.as_deref()
        && !t.is_empty()
        && t != "Normal"
        && t != "Warning"
    {
        errs.push(FieldError::new(
            "type",
            FieldErrorKind::NotSupported,
            format!("Unsupported value: {t:?}: supported values: \"Normal\", \"Warning\""),
        ));
    }
    if let Some(r) = e.reason.as_deref()
        && r.len() > 128
    {
        errs.push(FieldError::new(
            "reason",
            FieldErrorKind::TooLong,
            "Too long: may not be more than 128 bytes",
        ));
    }
    errs
}

fn validate_lease(l: &Lease) -> Vec<FieldError> {
    let mut errs = name_is_subdomain(l.metadata.name.as_ref());
    if let Some(spec) = &l.spec {
        if spec.lease_duration_seconds.is_some_and(|d| d <= 0) {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                "must be greater than 0",
            ));
        }
        if spec.lease_transitions.is_some_and(|t| t < 0) {
            errs.push(FieldError::invalid(
                "spec.leaseTransitions",
                "must be greater than or equal to 0",
            ));
        }
    }
    errs
}

/// Every served resource.
pub static RESOURCES: LazyLock<Vec<Resource>> = LazyLock::new(|| {
    vec![
        Resource {
            group: paddock_api::GROUP,
            version: paddock_api::VERSION,
            kind: "Cluster",
            plural: "clusters",
            singular: "cluster",
            short_names: &["cl"],
            categories: &["paddock"],
            namespaced: true,
            status_subresource: true,
            field_labels: &["status.phase"],
            codec: typed::<Cluster>(Validate::validate),
            columns: columns::cluster(),
        },
        Resource {
            group: paddock_api::GROUP,
            version: paddock_api::VERSION,
            kind: "Machine",
            plural: "machines",
            singular: "machine",
            short_names: &["ma"],
            categories: &["paddock"],
            namespaced: true,
            status_subresource: true,
            field_labels: &[
                "spec.hostName",
                "spec.clusterName",
                "spec.role",
                "status.phase",
            ],
            codec: typed::<Machine>(validate_machine),
            columns: columns::machine(),
        },
        Resource {
            group: paddock_api::GROUP,
            version: paddock_api::VERSION,
            kind: "Host",
            plural: "hosts",
            singular: "host",
            short_names: &["ho"],
            categories: &["paddock"],
            namespaced: false,
            status_subresource: true,
            field_labels: &["spec.unschedulable", "status.phase"],
            codec: typed::<Host>(validate_host),
            columns: columns::host(),
        },
        Resource {
            group: paddock_api::GROUP,
            version: paddock_api::VERSION,
            kind: "MachineImage",
            plural: "machineimages",
            singular: "machineimage",
            short_names: &["mi"],
            categories: &["paddock"],
            namespaced: false,
            status_subresource: false,
            field_labels: &[],
            codec: typed::<MachineImage>(validate_image),
            columns: columns::image(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Namespace",
            plural: "namespaces",
            singular: "namespace",
            short_names: &["ns"],
            categories: &[],
            namespaced: false,
            status_subresource: true,
            field_labels: &["status.phase"],
            codec: typed::<Namespace>(validate_namespace),
            columns: columns::namespace(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Secret",
            plural: "secrets",
            singular: "secret",
            short_names: &[],
            categories: &[],
            namespaced: true,
            status_subresource: false,
            field_labels: &["type"],
            codec: typed::<Secret>(validate_secret),
            columns: columns::secret(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Event",
            plural: "events",
            singular: "event",
            short_names: &["ev"],
            categories: &[],
            namespaced: true,
            status_subresource: false,
            // Kubernetes' own (`EventToSelectableFields`); `source` is
            // `source.component` (see `selector::field_value`).
            field_labels: &[
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            codec: typed::<Event>(validate_event),
            columns: columns::event(),
        },
        Resource {
            group: "coordination.k8s.io",
            version: "v1",
            kind: "Lease",
            plural: "leases",
            singular: "lease",
            short_names: &[],
            categories: &[],
            namespaced: true,
            status_subresource: false,
            field_labels: &["spec.holderIdentity"],
            codec: typed::<Lease>(validate_lease),
            columns: columns::lease(),
        },
    ]
});

/// Finds a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by kind and apiVersion.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The groups served, with their one version each, in discovery order.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter() {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalizes_with_defaults_and_reports_paths() {
        let r = find("paddock.io", "v1alpha1", "clusters").unwrap();
        let out = r
            .codec
            .normalize(json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "metadata": {"name": "a"}, "spec": {}}))
            .unwrap();
        assert_eq!(out["spec"]["controlPlane"]["memory"], "2Gi");
        let errs = r
            .codec
            .normalize(json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "metadata": {"name": "a"},
                "spec": {"controlPlane": {"memory": "lots"}}}))
            .unwrap_err();
        assert_eq!(errs[0].field, "spec.controlPlane.memory");
    }

    #[test]
    fn schemas_are_inline_objects() {
        for r in RESOURCES.iter() {
            let s = r.codec.schema();
            assert_eq!(s["type"], "object", "{}", r.kind);
            assert!(
                !s.to_string().contains("$ref"),
                "{} schema has refs",
                r.kind
            );
        }
    }
}
