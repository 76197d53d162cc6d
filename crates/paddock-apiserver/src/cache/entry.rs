//! One cached object, and one cached change: decoded once when the store
//! reports it, kept as the JSON the API serves (with its
//! `resourceVersion`), with the labels and selectable fields pulled out so
//! that selectors and indexes never decode it again.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use paddock_store::{KeyValue, Revision};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::object::meta_mut;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector, field_value, labels_of};

/// An object as the cache holds it.
#[derive(Debug)]
pub struct Entry {
    pub key: Arc<str>,
    pub name: String,
    pub namespace: String,
    pub mod_revision: Revision,
    /// The object as served: JSON with `metadata.resourceVersion`.
    pub json: Bytes,
    pub labels: BTreeMap<String, String>,
    /// The values of the resource's field labels, in its order.
    pub fields: Box<[String]>,
}

impl Entry {
    /// Decodes a stored record once; `served_at` stamps another revision
    /// than the record's (a delete's).
    pub fn new(res: &Resource, kv: &KeyValue, served_at: Option<Revision>) -> ApiResult<Self> {
        let mut obj: Value = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("corrupt object {}: {e}", kv.key)))?;
        let rv = served_at.unwrap_or(kv.mod_revision);
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        Ok(Self::from_object(res, &kv.key, rv, &obj))
    }

    /// The cached form of `obj`, which already carries `resourceVersion` `rv`.
    pub fn from_object(res: &Resource, key: &str, rv: Revision, obj: &Value) -> Self {
        let text = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            key: key.into(),
            name: text("/metadata/name"),
            namespace: text("/metadata/namespace"),
            mod_revision: rv,
            json: Bytes::from(serde_json::to_vec(obj).unwrap_or_default()),
            labels: labels_of(obj),
            fields: res
                .field_labels
                .iter()
                .map(|p| field_value(obj, p))
                .collect(),
        }
    }

    /// A field selector's value of `path` (`metadata.name`,
    /// `metadata.namespace` or one of the resource's field labels).
    pub fn field<'a>(&'a self, res: &Resource, path: &str) -> &'a str {
        match path {
            "metadata.name" => &self.name,
            "metadata.namespace" => &self.namespace,
            _ => res
                .field_labels
                .iter()
                .position(|p| *p == path)
                .and_then(|i| self.fields.get(i))
                .map_or("", String::as_str),
        }
    }

    pub fn selected(&self, res: &Resource, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        labels.matches(&self.labels) && fields.matches_with(|p| self.field(res, p))
    }

    /// The object, decoded (for callers that work on it).
    pub fn object(&self) -> ApiResult<Value> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::Internal(format!("cached object {}: {e}", self.key)))
    }
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one resource, shared by every watcher: each watch line
/// is encoded the first time a watcher needs it, then reused.
#[derive(Debug)]
pub struct Change {
    pub revision: Revision,
    /// The object the event carries: the new state, or for a delete the
    /// last state stamped with the delete's revision.
    pub object: Arc<Entry>,
    /// The state before, if there was one.
    pub prev: Option<Arc<Entry>>,
    pub deleted: bool,
    lines: [OnceLock<Bytes>; 3],
}

impl Change {
    pub fn new(
        revision: Revision,
        object: Arc<Entry>,
        prev: Option<Arc<Entry>>,
        deleted: bool,
    ) -> Self {
        Self {
            revision,
            object,
            prev,
            deleted,
            lines: Default::default(),
        }
    }

    pub fn key(&self) -> &str {
        &self.object.key
    }

    /// What this change is to a watcher with these selectors, if anything.
    pub fn classify(
        &self,
        res: &Resource,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Option<EventType> {
        let was = self
            .prev
            .as_ref()
            .is_some_and(|p| p.selected(res, labels, fields));
        if self.deleted {
            return was.then_some(EventType::Deleted);
        }
        match (self.object.selected(res, labels, fields), was) {
            (true, true) => Some(EventType::Modified),
            (true, false) => Some(EventType::Added),
            (false, true) => Some(EventType::Deleted),
            (false, false) => None,
        }
    }

    /// `{"type":…,"object":…}` and a newline, encoded once per type.
    pub fn line(&self, t: EventType) -> Bytes {
        let slot = match t {
            EventType::Added => &self.lines[0],
            EventType::Modified => &self.lines[1],
            EventType::Deleted => &self.lines[2],
        };
        slot.get_or_init(|| watch_line(t.as_str(), &self.object.json))
            .clone()
    }
}

/// A watch line around an object that is already JSON.
pub fn watch_line(kind: &str, object_json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object_json.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object_json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}
