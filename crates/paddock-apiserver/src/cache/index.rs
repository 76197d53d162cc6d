//! The objects of one resource, by key and indexed by every field label
//! and every label, in persistent maps: a snapshot is a clone (a few
//! reference counts), so a list reads one revision while the cache moves on.

use std::sync::Arc;

use imbl::{HashMap, OrdMap, OrdSet};

use super::entry::Entry;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};

type Keys = OrdSet<Arc<str>>;

#[derive(Clone)]
pub struct Objects {
    res: &'static Resource,
    by_key: OrdMap<Arc<str>, Arc<Entry>>,
    /// Per field label (in the resource's order): value → keys.
    by_field: Vec<HashMap<String, Keys>>,
    /// `key=value` → keys.
    by_label: HashMap<String, Keys>,
}

fn label_term(k: &str, v: &str) -> String {
    format!("{k}={v}")
}

fn add(index: &mut HashMap<String, Keys>, term: String, key: &Arc<str>) {
    index.entry(term).or_default().insert(key.clone());
}

fn take(index: &mut HashMap<String, Keys>, term: &str, key: &str) {
    if let Some(keys) = index.get_mut(term) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(term);
        }
    }
}

impl Objects {
    pub fn new(res: &'static Resource) -> Self {
        Self {
            res,
            by_key: OrdMap::new(),
            by_field: vec![HashMap::new(); res.field_labels.len()],
            by_label: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Arc<Entry>> {
        self.by_key.get(key)
    }

    /// Puts `e` in place of what its key held; returns that.
    pub fn insert(&mut self, e: Arc<Entry>) -> Option<Arc<Entry>> {
        let prev = self.remove(&e.key);
        for (i, v) in e.fields.iter().enumerate() {
            add(&mut self.by_field[i], v.clone(), &e.key);
        }
        for (k, v) in &e.labels {
            add(&mut self.by_label, label_term(k, v), &e.key);
        }
        self.by_key.insert(e.key.clone(), e);
        prev
    }

    pub fn remove(&mut self, key: &str) -> Option<Arc<Entry>> {
        let prev = self.by_key.remove(key)?;
        for (i, v) in prev.fields.iter().enumerate() {
            take(&mut self.by_field[i], v, key);
        }
        for (k, v) in &prev.labels {
            take(&mut self.by_label, &label_term(k, v), key);
        }
        Some(prev)
    }

    /// The smallest index set that every selected object is in, if a
    /// selector term has an index.
    fn candidates(&self, labels: &LabelSelector, fields: &FieldSelector) -> Option<Keys> {
        let empty = Keys::new();
        let mut sets: Vec<&Keys> = Vec::new();
        for (path, value) in fields.equals() {
            if let Some(i) = self.res.field_labels.iter().position(|p| *p == path) {
                sets.push(self.by_field[i].get(value).unwrap_or(&empty));
            }
        }
        for (k, v) in labels.exact() {
            sets.push(self.by_label.get(&label_term(k, v)).unwrap_or(&empty));
        }
        sets.into_iter().min_by_key(|s| s.len()).cloned()
    }

    /// How many objects are under `prefix` after the key `after`.
    pub fn count_after(&self, prefix: &str, after: &str) -> usize {
        self.by_key
            .range::<_, str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count()
    }

    /// Selected objects under `prefix`, after the key `after`, in key order:
    /// at most `limit`, and whether more follow.
    pub fn select(
        &self,
        prefix: &str,
        after: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
    ) -> (Vec<Arc<Entry>>, bool) {
        let lower = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
            _ => std::ops::Bound::Included(prefix),
        };
        let range = (lower, std::ops::Bound::Unbounded);
        let mut out = Vec::new();
        // False once full and another selected object is found.
        let mut take = |e: &Arc<Entry>| -> bool {
            if !e.selected(self.res, labels, fields) {
                return true;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                return false;
            }
            out.push(e.clone());
            true
        };
        let mut more = false;
        match self.candidates(labels, fields) {
            Some(keys) => {
                for k in keys.range::<_, str>(range) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    if let Some(e) = self.by_key.get(k)
                        && !take(e)
                    {
                        more = true;
                        break;
                    }
                }
            }
            None => {
                for (k, e) in self.by_key.range::<_, str>(range) {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    if !take(e) {
                        more = true;
                        break;
                    }
                }
            }
        }
        (out, more)
    }
}
