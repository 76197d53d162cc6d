//! Sets of field paths, as `managedFields` records them (`FieldsV1`), and
//! the walks over objects that make them: the fields a value sets, the
//! fields a write changes, and removing fields from an object.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::shape::Shape;

/// A set of paths into an object. Each node is one path element — `f:name`
/// (a field), `k:{"name":"a"}` (a keyed list's item), `v:"x"` (a set's
/// element), `i:0` (an item of a keyed list that lacks its keys) — and is
/// itself in the set if `own` (`"."` in `FieldsV1`, or an empty leaf).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    own: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.own && self.children.is_empty()
    }

    fn leaf() -> Self {
        FieldSet {
            own: true,
            children: BTreeMap::new(),
        }
    }

    fn insert_child(&mut self, key: String, child: FieldSet) {
        if !child.is_empty() {
            self.children.entry(key).or_default().union_with(&child);
        }
    }

    /// Adds every path of `other`.
    pub fn union_with(&mut self, other: &FieldSet) {
        self.own |= other.own;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union_with(c);
        }
    }

    /// The paths of `self` that `other` does not hold.
    pub fn minus(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            own: self.own && !other.own,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let rest = match other.children.get(k) {
                Some(o) => c.minus(o),
                None => c.clone(),
            };
            out.insert_child(k.clone(), rest);
        }
        out
    }

    /// The paths both hold.
    pub fn intersect(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            own: self.own && other.own,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                out.insert_child(k.clone(), c.intersect(o));
            }
        }
        out
    }

    /// Whether any path of `self` is at or under the path `at`.
    fn has_under(&self, at: &[String]) -> bool {
        match at.split_first() {
            None => !self.is_empty(),
            Some((k, rest)) => self.children.get(k).is_some_and(|c| c.has_under(rest)),
        }
    }

    /// The paths in the set, each a list of elements.
    pub fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.own && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `FieldsV1` form.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.own && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Reads the `FieldsV1` form.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let m = v
            .as_object()
            .ok_or_else(|| format!("fieldsV1 must be an object, not {v}"))?;
        let mut out = FieldSet {
            own: m.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, c) in m {
            if k == "." {
                out.own = true;
            } else if ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                out.children.insert(k.clone(), FieldSet::from_fields_v1(c)?);
            } else {
                return Err(format!("{k:?} is not a field path element"));
            }
        }
        Ok(out)
    }
}

/// A path as a person reads it: `.spec.nodePools[name="a"].replicas`.
pub fn render(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = el.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

fn field(name: &str) -> String {
    format!("f:{name}")
}

/// The element naming `item` of a keyed list: its key fields, sorted, as
/// compact JSON; `None` if it lacks one.
fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = BTreeMap::new();
    for k in keys {
        let v = item.get(k).filter(|v| !v.is_null())?;
        m.insert(k.clone(), v.clone());
    }
    Some(format!(
        "k:{}",
        serde_json::to_string(&m).unwrap_or_default()
    ))
}

fn set_key(v: &Value) -> String {
    format!("v:{}", serde_json::to_string(v).unwrap_or_default())
}

/// The elements naming the items of a keyed list, in order (an item
/// without its keys by index).
fn list_keys<'a>(items: &'a [Value], keys: &[String]) -> Vec<(String, &'a Value)> {
    items
        .iter()
        .enumerate()
        .map(|(i, it)| (item_key(it, keys).unwrap_or_else(|| format!("i:{i}")), it))
        .collect()
}

/// Every field `v` sets: what a manager that wrote `v` whole owns.
pub fn fields_of(v: &Value, shape: &Shape) -> FieldSet {
    match (shape, v) {
        (Shape::Struct(_), Value::Object(m)) => {
            let mut out = FieldSet {
                own: m.is_empty(),
                ..FieldSet::default()
            };
            for (k, c) in m.iter().filter(|(_, c)| !c.is_null()) {
                out.insert_child(field(k), fields_of(c, shape.field(k)));
            }
            out
        }
        (Shape::Map(elem), Value::Object(m)) => {
            let mut out = FieldSet::leaf();
            for (k, c) in m.iter().filter(|(_, c)| !c.is_null()) {
                out.insert_child(field(k), fields_of(c, elem));
            }
            out
        }
        (Shape::ListMap { keys, item }, Value::Array(items)) => {
            let mut out = FieldSet::default();
            for (k, it) in list_keys(items, keys) {
                let mut f = fields_of(it, item);
                f.own = true;
                out.insert_child(k, f);
            }
            if out.is_empty() {
                out.own = true;
            }
            out
        }
        (Shape::Set, Value::Array(items)) => {
            let mut out = FieldSet::leaf();
            for it in items {
                out.insert_child(set_key(it), FieldSet::leaf());
            }
            out
        }
        _ => FieldSet::leaf(),
    }
}

/// What a write from `old` to `new` did: the fields it set to a new value
/// (added or changed) and the fields it removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub set: FieldSet,
    pub removed: FieldSet,
}

/// The changes from `old` to `new`.
pub fn changes(old: &Value, new: &Value, shape: &Shape) -> Changes {
    let mut out = Changes::default();
    diff_into(old, new, shape, &mut out.set, &mut out.removed);
    out
}

/// One child of two values being compared: its field, its old and new
/// values, and its shape.
type Pair = (String, Option<Value>, Option<Value>, Shape);

fn diff_into(old: &Value, new: &Value, shape: &Shape, set: &mut FieldSet, removed: &mut FieldSet) {
    let pairs = |shape: &Shape, old: &Value, new: &Value| -> Option<Vec<Pair>> {
        match (shape, old, new) {
            (Shape::Struct(_) | Shape::Map(_), Value::Object(o), Value::Object(n)) => {
                let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
                keys.sort();
                keys.dedup();
                Some(
                    keys.into_iter()
                        .map(|k| {
                            (
                                field(k),
                                o.get(k).filter(|v| !v.is_null()).cloned(),
                                n.get(k).filter(|v| !v.is_null()).cloned(),
                                shape.field(k).clone(),
                            )
                        })
                        .collect(),
                )
            }
            (Shape::ListMap { keys, item }, Value::Array(o), Value::Array(n)) => {
                let o = list_keys(o, keys);
                let n = list_keys(n, keys);
                let mut names: Vec<&String> = o.iter().chain(n.iter()).map(|(k, _)| k).collect();
                names.sort();
                names.dedup();
                let find = |l: &[(String, &Value)], k: &str| {
                    l.iter().find(|(x, _)| x == k).map(|(_, v)| (*v).clone())
                };
                Some(
                    names
                        .into_iter()
                        .map(|k| (k.clone(), find(&o, k), find(&n, k), (**item).clone()))
                        .collect(),
                )
            }
            (Shape::Set, Value::Array(o), Value::Array(n)) => {
                let mut all: Vec<(String, Option<Value>, Option<Value>, Shape)> = Vec::new();
                for v in o.iter().chain(n.iter()) {
                    let k = set_key(v);
                    if all.iter().any(|(x, ..)| *x == k) {
                        continue;
                    }
                    all.push((
                        k,
                        o.contains(v).then(|| v.clone()),
                        n.contains(v).then(|| v.clone()),
                        Shape::Atomic,
                    ));
                }
                Some(all)
            }
            _ => None,
        }
    };
    let Some(children) = pairs(shape, old, new) else {
        if old != new {
            set.own = true;
        }
        return;
    };
    for (k, o, n, child_shape) in children {
        // A keyed list's item or a map's entry is itself owned by whoever
        // makes it.
        match (o, n) {
            (None, Some(n)) => {
                let mut f = fields_of(&n, &child_shape);
                if k.starts_with("k:") || k.starts_with("i:") || k.starts_with("v:") {
                    f.own = true;
                }
                set.insert_child(k, f);
            }
            (Some(o), None) => {
                let mut f = fields_of(&o, &child_shape);
                f.own = true;
                removed.insert_child(k, f);
            }
            (Some(o), Some(n)) => {
                let mut s = FieldSet::default();
                let mut r = FieldSet::default();
                diff_into(&o, &n, &child_shape, &mut s, &mut r);
                set.insert_child(k.clone(), s);
                removed.insert_child(k, r);
            }
            (None, None) => {}
        }
    }
}

/// Removes from `v` every path of `paths` that `keep` holds nothing at or
/// under.
pub fn remove(v: &mut Value, shape: &Shape, paths: &FieldSet, keep: &FieldSet) {
    remove_at(v, shape, paths, keep, &mut Vec::new());
}

fn remove_at(
    v: &mut Value,
    shape: &Shape,
    paths: &FieldSet,
    keep: &FieldSet,
    at: &mut Vec<String>,
) {
    for (k, sub) in &paths.children {
        at.push(k.clone());
        let kept = keep.has_under(at);
        match (shape, &mut *v) {
            (Shape::Struct(_) | Shape::Map(_), Value::Object(m)) => {
                if let Some(name) = k.strip_prefix("f:") {
                    if sub.own && !kept {
                        m.remove(name);
                    } else if let Some(child) = m.get_mut(name) {
                        remove_at(child, shape.field(name), sub, keep, at);
                    }
                }
            }
            (Shape::ListMap { keys, item }, Value::Array(items)) => {
                let pos = items
                    .iter()
                    .position(|it| item_key(it, keys).as_deref() == Some(k.as_str()));
                if let Some(i) = pos {
                    if sub.own && !kept {
                        items.remove(i);
                    } else {
                        // An item that stays keeps its keys.
                        let mut sub = sub.clone();
                        for key in keys {
                            sub.children.remove(&field(key));
                        }
                        remove_at(&mut items[i], item, &sub, keep, at);
                    }
                }
            }
            (Shape::Set, Value::Array(items)) if sub.own && !kept => {
                items.retain(|it| set_key(it) != *k);
            }
            _ => {}
        }
        at.pop();
    }
}

/// `config` merged into `live` as an apply merges it: fields it names
/// replace the live ones, keyed lists merge by key, sets by element,
/// everything else is replaced whole; an explicit null removes.
pub fn merge(live: &Value, config: &Value, shape: &Shape) -> Value {
    match (shape, live, config) {
        (Shape::Struct(_) | Shape::Map(_), Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                if cv.is_null() {
                    out.remove(k);
                } else {
                    let merged = match l.get(k) {
                        Some(lv) => merge(lv, cv, shape.field(k)),
                        None => cv.clone(),
                    };
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (Shape::ListMap { keys, item }, Value::Array(l), Value::Array(c)) => {
            let mut out = l.clone();
            for ci in c {
                let key = item_key(ci, keys);
                let pos = key.as_ref().and_then(|k| {
                    out.iter()
                        .position(|li| item_key(li, keys).as_ref() == Some(k))
                });
                match pos {
                    Some(i) => out[i] = merge(&out[i], ci, item),
                    None => out.push(ci.clone()),
                }
            }
            Value::Array(out)
        }
        (Shape::Set, Value::Array(l), Value::Array(c)) => {
            let mut out = l.clone();
            for ci in c {
                if !out.contains(ci) {
                    out.push(ci.clone());
                }
            }
            Value::Array(out)
        }
        _ => config.clone(),
    }
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
                "args": {"type": "array", "items": {"type": "string"}},
            }},
        }}))
    }

    #[test]
    fn a_values_fields_in_fields_v1() {
        let v = json!({"metadata": {"labels": {"app": "web"}, "finalizers": ["x"]},
                       "spec": {"replicas": 2, "pools": [{"name": "a", "size": 1}], "args": ["-v"]}});
        let f = fields_of(&v, &shape());
        assert_eq!(
            f.to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}, "f:finalizers": {".": {}, "v:\"x\"": {}}},
                "f:spec": {"f:replicas": {}, "f:args": {},
                           "f:pools": {"k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:size": {}}}},
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&f.to_fields_v1()).unwrap(), f);
        let paths: Vec<String> = f.paths().iter().map(|p| render(p)).collect();
        assert!(
            paths.contains(&".spec.pools[name=\"a\"].size".to_owned()),
            "{paths:?}"
        );
        assert!(FieldSet::from_fields_v1(&json!({"x": {}})).is_err());
    }

    #[test]
    fn changes_are_what_was_set_and_what_was_removed() {
        let old = json!({"spec": {"replicas": 2, "pools": [{"name": "a", "size": 1}, {"name": "b", "size": 1}]}});
        let new = json!({"spec": {"replicas": 3, "pools": [{"name": "a", "size": 1}], "args": []}});
        let c = changes(&old, &new, &shape());
        assert_eq!(
            c.set.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}, "f:args": {}}})
        );
        assert_eq!(
            c.removed.to_fields_v1(),
            json!({"f:spec": {"f:pools": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:size": {}}}}})
        );
        assert_eq!(changes(&old, &old, &shape()), Changes::default());
    }

    #[test]
    fn set_operations() {
        let a = fields_of(&json!({"spec": {"replicas": 1, "args": []}}), &shape());
        let b = fields_of(&json!({"spec": {"replicas": 1}}), &shape());
        assert_eq!(
            a.minus(&b).to_fields_v1(),
            json!({"f:spec": {"f:args": {}}})
        );
        assert_eq!(a.intersect(&b), b);
        let mut u = b.clone();
        u.union_with(&a);
        assert_eq!(u, a);
    }

    #[test]
    fn merge_and_remove_follow_the_shape() {
        let live = json!({"metadata": {"finalizers": ["a"]},
                          "spec": {"replicas": 1, "args": ["x", "y"], "pools": [{"name": "a", "size": 1}]}});
        let config = json!({"metadata": {"finalizers": ["b"]},
                            "spec": {"args": ["z"], "pools": [{"name": "a", "size": 2}, {"name": "c", "size": 1}]}});
        let mut m = merge(&live, &config, &shape());
        assert_eq!(
            m,
            json!({"metadata": {"finalizers": ["a", "b"]},
                   "spec": {"replicas": 1, "args": ["z"], "pools": [{"name": "a", "size": 2}, {"name": "c", "size": 1}]}})
        );
        let gone = fields_of(
            &json!({"spec": {"replicas": 1, "pools": [{"name": "c", "size": 1}]}}),
            &shape(),
        );
        // Another manager holds pool c's size: the item stays.
        let keep = fields_of(
            &json!({"spec": {"pools": [{"name": "c", "size": 1}]}}),
            &shape(),
        )
        .minus(&fields_of(
            &json!({"spec": {"pools": [{"name": "c"}]}}),
            &shape(),
        ));
        remove(&mut m, &shape(), &gone, &keep);
        assert_eq!(m["spec"].get("replicas"), None);
        assert_eq!(m["spec"]["pools"].as_array().map(Vec::len), Some(2));
        remove(&mut m, &shape(), &gone, &FieldSet::default());
        assert_eq!(m["spec"]["pools"], json!([{"name": "a", "size": 2}]));
    }
}
