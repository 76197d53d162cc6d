//! `metadata.managedFields`: which manager owns which fields, kept on every
//! write, and the two ways a write changes it — an update takes the fields
//! it changes from everyone else; an apply owns exactly the fields it names,
//! refuses to take a field another manager set to something else unless
//! forced, and removes the fields it named before and no longer does.

use serde_json::{Value, json};

use super::fieldset::{self, Changes, FieldSet};
use super::shape::Shape;

/// How a manager last wrote its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One entry of `managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: String,
    /// `status` for writes through the status subresource.
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let operation = match v["operation"].as_str()? {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            _ => return None,
        };
        Some(Entry {
            manager: v["manager"].as_str()?.to_owned(),
            operation,
            api_version: v["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: v["time"].as_str().unwrap_or_default().to_owned(),
            subresource: v["subresource"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            fields: FieldSet::from_fields_v1(&v["fieldsV1"]).ok()?,
        })
    }

    fn is(&self, w: &Writer<'_>, op: Operation) -> bool {
        self.manager == w.manager
            && self.operation == op
            && self.subresource.as_deref() == w.subresource
    }
}

/// The entries an object carries (any that cannot be read are dropped).
pub fn read(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Entry::from_json)
        .collect()
}

/// Sets the object's entries (none: the field is left out).
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(Entry::to_json).collect()),
        );
    }
}

/// Who writes, through what, and when.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// An ordinary write (create, update, patch) made `changes`: its manager
/// owns what it set, and no one owns what it changed or removed any more.
pub fn record_update(entries: &mut Vec<Entry>, w: &Writer<'_>, changes: &Changes) {
    if changes.set.is_empty() && changes.removed.is_empty() {
        return;
    }
    let mut touched = changes.set.clone();
    touched.union_with(&changes.removed);
    for e in entries.iter_mut() {
        e.fields = e.fields.minus(&touched);
    }
    match entries.iter_mut().find(|e| e.is(w, Operation::Update)) {
        Some(e) => {
            e.fields.union_with(&changes.set);
            e.time = w.now.to_owned();
            e.api_version = w.api_version.to_owned();
        }
        None if !changes.set.is_empty() => entries.push(Entry {
            manager: w.manager.to_owned(),
            operation: Operation::Update,
            api_version: w.api_version.to_owned(),
            time: w.now.to_owned(),
            subresource: w.subresource.map(str::to_owned),
            fields: changes.set.clone(),
        }),
        None => {}
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// A field an apply would take from another manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// As a person reads it: `.spec.nodePools[name="a"].replicas`.
    pub field: String,
}

/// The outcome of an apply: the object and its entries.
#[derive(Debug)]
pub struct Applied {
    pub object: Value,
    pub entries: Vec<Entry>,
}

/// Applies `config` (the tracked part of it) to `live` for `w.manager`.
pub fn apply(
    entries: &[Entry],
    w: &Writer<'_>,
    live: &Value,
    config: &Value,
    shape: &Shape,
    force: bool,
) -> Result<Applied, Vec<Conflict>> {
    let applied = fieldset::fields_of(config, shape);
    let mut merged = fieldset::merge(live, config, shape);
    let changed = fieldset::changes(live, &merged, shape)
        .set
        .intersect(&applied);
    let mut entries = entries.to_vec();
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| e.manager != w.manager) {
        for path in e.fields.intersect(&changed).paths() {
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                field: fieldset::render(&path),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for e in entries.iter_mut().filter(|e| e.manager != w.manager) {
        e.fields = e.fields.minus(&changed);
    }
    // What this manager applied before and no longer names goes, unless
    // someone else owns it too.
    let before = entries
        .iter()
        .find(|e| e.is(w, Operation::Apply))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let dropped = before.minus(&applied);
    let mut others = FieldSet::default();
    for e in entries.iter().filter(|e| !e.is(w, Operation::Apply)) {
        others.union_with(&e.fields);
    }
    fieldset::remove(&mut merged, shape, &dropped, &others);
    let mine = Entry {
        manager: w.manager.to_owned(),
        operation: Operation::Apply,
        api_version: w.api_version.to_owned(),
        time: w.now.to_owned(),
        subresource: w.subresource.map(str::to_owned),
        fields: applied,
    };
    // An apply that changes nothing leaves its entry (and time) as it was.
    let no_op = changed.is_empty() && dropped.is_empty();
    match entries.iter_mut().find(|e| e.is(w, Operation::Apply)) {
        Some(e) if no_op && e.fields == mine.fields => {}
        Some(e) => *e = mine,
        None => entries.push(mine),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(Applied {
        object: merged,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape() -> Shape {
        Shape::of_kind(&json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer"},
                "pools": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {}, "size": {}}}},
            }},
        }}))
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            subresource: None,
            api_version: "paddock.io/v1alpha1",
            now: "2026-12-02T00:00:00Z",
        }
    }

    #[test]
    fn two_appliers_share_equal_values_and_conflict_on_different_ones() {
        let s = shape();
        let a = apply(
            &[],
            &writer("alice"),
            &json!({}),
            &json!({"spec": {"replicas": 1}}),
            &s,
            false,
        )
        .unwrap();
        // Bob applies the same value: no conflict, both own it.
        let b = apply(
            &a.entries,
            &writer("bob"),
            &a.object,
            &json!({"spec": {"replicas": 1}}),
            &s,
            false,
        )
        .unwrap();
        assert_eq!(b.entries.len(), 2);
        // Bob applies another value: a conflict naming alice and the field.
        let err = apply(
            &b.entries,
            &writer("bob"),
            &b.object,
            &json!({"spec": {"replicas": 3}}),
            &s,
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "alice".into(),
                field: ".spec.replicas".into()
            }]
        );
        // Forced, bob takes it and alice owns nothing left.
        let f = apply(
            &b.entries,
            &writer("bob"),
            &b.object,
            &json!({"spec": {"replicas": 3}}),
            &s,
            true,
        )
        .unwrap();
        assert_eq!(f.object, json!({"spec": {"replicas": 3}}));
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].manager, "bob");
    }

    #[test]
    fn an_apply_removes_what_it_no_longer_names_unless_another_owns_it() {
        let s = shape();
        let cfg = json!({"spec": {"replicas": 1, "pools": [{"name": "a", "size": 1}, {"name": "b", "size": 1}]}});
        let a = apply(&[], &writer("alice"), &json!({}), &cfg, &s, false).unwrap();
        let mut entries = a.entries.clone();
        // Someone else edits pool b's size.
        let mut edited = a.object.clone();
        edited["spec"]["pools"][1]["size"] = json!(5);
        record_update(
            &mut entries,
            &writer("kubectl-edit"),
            &fieldset::changes(&a.object, &edited, &s),
        );
        let again = apply(
            &entries,
            &writer("alice"),
            &edited,
            &json!({"spec": {"pools": [{"name": "a", "size": 1}]}}),
            &s,
            false,
        )
        .unwrap();
        // Replicas went; pool b stays, its size owned by the editor.
        assert_eq!(
            again.object,
            json!({"spec": {"pools": [{"name": "a", "size": 1}, {"name": "b", "size": 5}]}})
        );
    }

    #[test]
    fn updates_take_what_they_change() {
        let s = shape();
        let a = apply(
            &[],
            &writer("alice"),
            &json!({}),
            &json!({"spec": {"replicas": 1}}),
            &s,
            false,
        )
        .unwrap();
        let mut entries = a.entries.clone();
        let new = json!({"spec": {"replicas": 2}});
        record_update(
            &mut entries,
            &writer("kubectl"),
            &fieldset::changes(&a.object, &new, &s),
        );
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].manager, "kubectl");
        assert_eq!(entries[0].operation, Operation::Update);
        // JSON round trip.
        let mut obj = json!({"metadata": {}});
        write(&mut obj, &entries);
        assert_eq!(read(&obj), entries);
        assert_eq!(
            obj["metadata"]["managedFields"][0]["fieldsType"],
            "FieldsV1"
        );
    }
}
