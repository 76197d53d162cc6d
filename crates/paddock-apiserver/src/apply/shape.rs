//! How server-side apply sees the parts of an object: which objects are
//! structs and which maps, which lists are keyed, which are sets and which
//! are replaced whole (structured-merge-diff's schema), read from the
//! kind's OpenAPI schema and its `x-kubernetes-list-type` extensions.

use std::collections::BTreeMap;

use serde_json::Value;

/// The shape of one part of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Replaced whole: scalars, atomic lists and maps, anything untyped.
    Atomic,
    /// An object with named fields; fields the schema does not name are
    /// atomic.
    Struct(BTreeMap<String, Shape>),
    /// An object with free keys (labels, a Secret's data).
    Map(Box<Shape>),
    /// A list whose items are told apart by the values of `keys`.
    ListMap { keys: Vec<String>, item: Box<Shape> },
    /// A list of distinct scalars.
    Set,
}

static ATOMIC: Shape = Shape::Atomic;

impl Shape {
    /// The shape of field or key `name` of an object of this shape.
    pub fn field(&self, name: &str) -> &Shape {
        match self {
            Shape::Struct(fields) => fields.get(name).unwrap_or(&ATOMIC),
            Shape::Map(elem) => elem,
            _ => &ATOMIC,
        }
    }

    /// Reads a shape from an (inlined) OpenAPI v3 schema.
    pub fn from_schema(schema: &Value) -> Shape {
        if schema["x-kubernetes-map-type"] == "atomic" {
            return Shape::Atomic;
        }
        if let Some(props) = schema["properties"].as_object() {
            return Shape::Struct(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), Shape::from_schema(v)))
                    .collect(),
            );
        }
        if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            return Shape::Map(Box::new(Shape::from_schema(ap)));
        }
        if let Some(items) = schema.get("items") {
            let item = Shape::from_schema(items);
            return match schema["x-kubernetes-list-type"].as_str() {
                Some("map") => {
                    let keys: Vec<String> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect();
                    if keys.is_empty() {
                        Shape::Atomic
                    } else {
                        Shape::ListMap {
                            keys,
                            item: Box::new(item),
                        }
                    }
                }
                Some("set") => Shape::Set,
                // Kubernetes' conditions are keyed by type, whether or not
                // a schema says so.
                _ if is_condition(items) => Shape::ListMap {
                    keys: vec!["type".into()],
                    item: Box::new(item),
                },
                _ => Shape::Atomic,
            };
        }
        Shape::Atomic
    }

    /// The shape of a whole object of a kind whose schema is `schema`:
    /// Kubernetes' `ObjectMeta` under `metadata`, whatever the schema says.
    pub fn of_kind(schema: &Value) -> Shape {
        let mut shape = Shape::from_schema(schema);
        if let Shape::Struct(fields) = &mut shape {
            fields.insert("metadata".into(), object_meta());
        }
        shape
    }
}

fn is_condition(item: &Value) -> bool {
    let p = &item["properties"];
    p.get("type").is_some() && p.get("status").is_some() && p.get("lastTransitionTime").is_some()
}

/// `metadata`: maps for labels and annotations, finalizers a set, owner
/// references keyed by uid (as Kubernetes' own schema marks them).
fn object_meta() -> Shape {
    let owner = Shape::Struct(
        [
            "apiVersion",
            "kind",
            "name",
            "uid",
            "controller",
            "blockOwnerDeletion",
        ]
        .iter()
        .map(|k| ((*k).to_owned(), Shape::Atomic))
        .collect(),
    );
    Shape::Struct(BTreeMap::from([
        ("labels".to_owned(), Shape::Map(Box::new(Shape::Atomic))),
        (
            "annotations".to_owned(),
            Shape::Map(Box::new(Shape::Atomic)),
        ),
        ("finalizers".to_owned(), Shape::Set),
        (
            "ownerReferences".to_owned(),
            Shape::ListMap {
                keys: vec!["uid".into()],
                item: Box::new(owner),
            },
        ),
        ("generateName".to_owned(), Shape::Atomic),
    ]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_structs_maps_keyed_lists_and_sets() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "pools": {"type": "array", "x-kubernetes-list-type": "map",
                          "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"}, "replicas": {"type": "integer"}}}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "args": {"type": "array", "items": {"type": "string"}},
                "selector": {"type": "object", "x-kubernetes-map-type": "atomic", "properties": {"a": {}}},
                "data": {"type": "object", "additionalProperties": {"type": "string"}},
            }},
            "status": {"type": "object", "properties": {"conditions": {"type": "array", "items": {
                "type": "object", "properties": {"type": {}, "status": {}, "lastTransitionTime": {}}}}}},
        }});
        let s = Shape::of_kind(&schema);
        let spec = s.field("spec");
        assert!(matches!(spec.field("pools"), Shape::ListMap { keys, .. } if keys == &["name"]));
        assert_eq!(spec.field("tags"), &Shape::Set);
        assert_eq!(spec.field("args"), &Shape::Atomic);
        assert_eq!(spec.field("selector"), &Shape::Atomic);
        assert!(matches!(spec.field("data"), Shape::Map(_)));
        assert!(matches!(
            s.field("status").field("conditions"),
            Shape::ListMap { keys, .. } if keys == &["type"]
        ));
        assert_eq!(s.field("metadata").field("finalizers"), &Shape::Set);
        assert_eq!(spec.field("unknown"), &Shape::Atomic);
    }
}
