//! Small helpers over objects held as JSON: metadata access and timestamps.

use serde_json::{Map, Value, json};

pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's metadata map, created if absent.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Some(o) = obj.as_object_mut() else {
        unreachable!("made an object above")
    };
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    match m.as_object_mut() {
        Some(m) => m,
        None => unreachable!("made an object above"),
    }
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub fn name(obj: &Value) -> Option<&str> {
    meta_str(obj, "name")
}

pub fn uid(obj: &Value) -> Option<&str> {
    meta_str(obj, "uid")
}

pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace")
}

pub fn is_deleting(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_finalizers(obj: &mut Value, fins: &[String]) {
    let m = meta_mut(obj);
    if fins.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(fins));
    }
}

/// Namespaces carry their own finalizers in `spec.finalizers`.
pub fn spec_finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether anything still holds the object back from deletion.
pub fn has_finalizers(obj: &Value) -> bool {
    !finalizers(obj).is_empty() || !spec_finalizers(obj).is_empty()
}

/// Owner references as (uid, kind, name, blockOwnerDeletion).
pub fn owners(obj: &Value) -> Vec<(String, String, String, bool)> {
    meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some((
                        r.get("uid")?.as_str()?.to_owned(),
                        r.get("kind")?.as_str()?.to_owned(),
                        r.get("name")?.as_str()?.to_owned(),
                        r.get("blockOwnerDeletion")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The object without its resourceVersion, for comparisons.
pub fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    meta_mut(&mut o).remove("resourceVersion");
    o
}

/// Everything but metadata and status: what `generation` counts changes of.
pub fn desired_state(obj: &Value) -> Value {
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// Paths present (and non-null) in `input` but dropped from `output`.
pub fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unknown_fields() {
        let i = json!({"spec": {"a": 1, "b": {"c": 2}, "n": null, "l": [{"x": 1, "y": 2}]}});
        let o = json!({"spec": {"a": 1, "b": {}, "l": [{"x": 1}]}});
        let mut out = Vec::new();
        unknown_fields(&i, &o, "", &mut out);
        assert_eq!(out, vec!["spec.b.c", "spec.l[0].y"]);
    }

    #[test]
    fn timestamps_are_whole_seconds() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
    }
}
