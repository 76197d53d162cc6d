//! Server-side apply and field ownership, as Kubernetes' structured merge
//! does them: every write records in `metadata.managedFields` which
//! manager owns which fields, and `PATCH` with
//! `application/apply-patch+yaml` merges a manager's configuration by the
//! kind's structure (keyed lists by their keys), with conflicts when it
//! would take another manager's field.
//!
//! No Rust crate implements Kubernetes' structured merge, so it is here:
//! [`shape`] reads a kind's structure from its schema, [`fieldset`] is the
//! set of paths and the walks over objects, [`managed`] the ownership rules.

pub mod fieldset;
pub mod managed;
pub mod shape;

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

pub use fieldset::FieldSet;
pub use managed::{Conflict, Entry, Operation, Writer};
pub use shape::Shape;

use crate::resources::{RESOURCES, Resource};

static SHAPES: LazyLock<HashMap<String, Shape>> = LazyLock::new(|| {
    RESOURCES
        .iter()
        .map(|r| (key(r), Shape::of_kind(&r.codec.schema())))
        .collect()
});

fn key(r: &Resource) -> String {
    format!("{}/{}", r.group, r.plural)
}

static ATOMIC: Shape = Shape::Atomic;

/// The shape of `res`'s objects.
pub fn shape_of(res: &Resource) -> &'static Shape {
    SHAPES.get(&key(res)).unwrap_or(&ATOMIC)
}

/// The metadata no manager owns: who the object is and what the server
/// keeps.
const UNTRACKED_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of `obj` that a write through the main resource (`status:
/// false`) or the status subresource (`status: true`) owns: never
/// `apiVersion`, `kind` or the server's metadata; the status only through
/// its subresource, where the kind has one.
pub fn tracked(res: &Resource, obj: &Value, status: bool) -> Value {
    let mut out = obj.clone();
    let Some(m) = out.as_object_mut() else {
        return out;
    };
    m.remove("apiVersion");
    m.remove("kind");
    if res.status_subresource {
        if status {
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
    }
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in UNTRACKED_METADATA {
            meta.remove(f);
        }
        if meta.is_empty() {
            m.remove("metadata");
        }
    }
    out
}

/// `merged`, the tracked part an apply produced, made whole again with
/// what the write does not own taken from `old`: `apiVersion`, `kind`, the
/// server's metadata, and the other half (status, or everything but it).
pub fn restore_untracked(res: &Resource, old: &Value, mut merged: Value, status: bool) -> Value {
    let (Some(m), Some(o)) = (merged.as_object_mut(), old.as_object()) else {
        return merged;
    };
    for f in ["apiVersion", "kind"] {
        if let Some(v) = o.get(f) {
            m.insert(f.into(), v.clone());
        }
    }
    if res.status_subresource {
        for (k, v) in o {
            let other_half = if status { k != "status" } else { k == "status" };
            if other_half && k != "metadata" {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    let old_meta = o.get("metadata").and_then(Value::as_object);
    let meta = m
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let (Some(meta), Some(old_meta)) = (meta.as_object_mut(), old_meta) {
        for f in UNTRACKED_METADATA {
            if let Some(v) = old_meta.get(f) {
                meta.insert(f.into(), v.clone());
            }
        }
        if status {
            // The status subresource changes no metadata.
            for (k, v) in old_meta {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_has_a_shape_and_clusters_key_their_pools_by_name() {
        for r in RESOURCES.iter() {
            assert!(matches!(shape_of(r), Shape::Struct(_)), "{}", r.plural);
        }
        let clusters = crate::resources::find(paddock_api::GROUP, paddock_api::VERSION, "clusters")
            .expect("clusters");
        assert!(matches!(
            shape_of(clusters).field("spec").field("nodePools"),
            Shape::ListMap { keys, .. } if keys == &["name"]
        ));
    }

    #[test]
    fn the_tracked_part_leaves_out_identity_and_the_other_half() {
        let clusters = crate::resources::find(paddock_api::GROUP, paddock_api::VERSION, "clusters")
            .expect("clusters");
        let obj = json!({"apiVersion": "x", "kind": "Cluster",
                         "metadata": {"name": "a", "uid": "u", "labels": {"k": "v"}},
                         "spec": {"a": 1}, "status": {"phase": "Ready"}});
        assert_eq!(
            tracked(clusters, &obj, false),
            json!({"metadata": {"labels": {"k": "v"}}, "spec": {"a": 1}})
        );
        assert_eq!(
            tracked(clusters, &obj, true),
            json!({"status": {"phase": "Ready"}})
        );
    }
}
