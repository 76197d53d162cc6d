//! Paddock's store: a versioned key-value map with a single, monotonically
//! increasing revision (the API's `resourceVersion`), compare-and-set writes
//! and a bounded change history for watches.
//!
//! The API server talks only to the [`Store`] trait. The embedded backend is
//! [`RedbStore`] (one directory, every acknowledged write fsynced);
//! [`EtcdStore`] implements the same trait on an etcd cluster, with etcd's
//! revisions, for several server replicas.

pub mod backup;
mod codec;
pub mod encrypted;
mod etcd_store;
mod hub;
mod redb_store;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use encrypted::{EncryptedStore, SealingKey};
pub use etcd_store::{EtcdOptions, EtcdStore};
pub use hub::Watch;
pub use redb_store::{RedbStore, StoreOptions};

/// A store revision. Every successful write gets the next one.
pub type Revision = u64;

/// A stored value with the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or replaced; `prev` is the value it replaced.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was removed at `revision`; `prev` is its last value.
    Delete { prev: KeyValue, revision: Revision },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// What must hold for a write to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// The key must not exist (create).
    MustNotExist,
    /// The key must exist with exactly this modification revision.
    ModRevision(Revision),
    /// The key must exist (any revision).
    MustExist,
}

/// A write that holds only while `key` is at `mod_revision`: the token of
/// a leader's term. A new leader rewrites the key when it takes over, so
/// every write still in flight from the one before fails with
/// [`StoreError::Fenced`], decided in the same transaction as the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub mod_revision: Revision,
}

/// A page of a range read, and the store revision it was read at.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
    /// More keys follow under the same prefix.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("key {key:?} is at revision {actual}, not {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} is compacted; the oldest revision watchable is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("revision {requested} is newer than the store's {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("corrupt record for key {0:?}")]
    Corrupt(String),
    #[error("store is closed")]
    Closed,
    #[error("fenced: {key:?} is no longer at revision {expected} (a newer term holds it)")]
    Fenced { key: String, expected: Revision },
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The interface the API server needs from a store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Keys under `prefix` in order, after `start_after`, at most `limit`,
    /// as they were at revision `at` (the newest when `None`): the pages of
    /// one list, read at the first page's revision, form one snapshot.
    /// A revision older than the kept history is [`StoreError::Compacted`].
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<Page>;
    /// How many keys under `prefix`, after `start_after`, there were at
    /// revision `at` (the newest when `None`), without reading their values.
    async fn count(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        at: Option<Revision>,
    ) -> Result<usize> {
        Ok(self.list(prefix, start_after, None, at).await?.items.len())
    }
    /// Writes `value` at `key` if `pre` and `fence` hold; returns the stored record.
    async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<KeyValue>;
    /// Removes `key` if `pre` and `fence` hold; returns its last value and
    /// the revision of the delete.
    async fn delete_fenced(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<(KeyValue, Revision)>;
    /// Writes `value` at `key` if `pre` holds; returns the stored record.
    async fn put(&self, key: &str, value: Bytes, pre: Precondition) -> Result<KeyValue> {
        self.put_fenced(key, value, pre, None).await
    }
    /// Removes `key` if `pre` holds; returns its last value and the revision of the delete.
    async fn delete(&self, key: &str, pre: Precondition) -> Result<(KeyValue, Revision)> {
        self.delete_fenced(key, pre, None).await
    }
    /// Changes under `prefix` with a revision greater than `after`, then live.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;
    /// The newest revision this process has seen (cheap, may lag a store
    /// that other processes write).
    fn revision(&self) -> Revision;
    /// The store's newest revision, read from the store itself: what a
    /// read that must see every acknowledged write waits for.
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.revision())
    }
    /// Whether the store can serve reads and take writes (for readiness).
    async fn check(&self) -> Result<()> {
        self.get("/health").await.map(|_| ())
    }
}

/// A shared handle to any store.
pub type DynStore = Arc<dyn Store>;
