//! The embedded backend: one redb file. Writes are batched by a single
//! writer thread into one transaction per batch (group commit), fsynced
//! before any of them is acknowledged.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{decode_event, decode_record, encode_event, encode_record, event_key};
use crate::hub::Hub;
use crate::{
    Event, Fence, KeyValue, Page, Precondition, Result, Revision, Store, StoreError, Watch,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const REVISION: &str = "revision";
const MAX_BATCH: usize = 512;

/// Tunables of the embedded store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Changes kept for watch resume.
    pub history: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { history: 50_000 }
    }
}

enum Op {
    Put {
        key: String,
        value: Bytes,
        pre: Precondition,
        fence: Option<Fence>,
        reply: oneshot::Sender<Result<KeyValue>>,
    },
    Delete {
        key: String,
        pre: Precondition,
        fence: Option<Fence>,
        reply: oneshot::Sender<Result<(KeyValue, Revision)>>,
    },
}

/// The embedded, crash-safe store.
pub struct RedbStore {
    db: Arc<Database>,
    hub: Arc<Hub>,
    writer: mpsc::Sender<Op>,
    /// Joined on drop so the file is closed when the store is.
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Close the queue: swap in a sender whose receiver is already gone.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("paddock.redb")).map_err(backend)?;
        let (current, history) = {
            let w = db.begin_write().map_err(backend)?;
            w.open_table(KV).map_err(backend)?;
            w.open_table(META).map_err(backend)?;
            w.open_table(HISTORY).map_err(backend)?;
            w.commit().map_err(backend)?;
            let r = db.begin_read().map_err(backend)?;
            let meta = r.open_table(META).map_err(backend)?;
            let current = meta
                .get(REVISION)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            let hist = r.open_table(HISTORY).map_err(backend)?;
            let mut history = Vec::new();
            for item in hist
                .range(current.saturating_sub(opts.history as u64)..)
                .map_err(backend)?
            {
                let (_, v) = item.map_err(backend)?;
                if let Some(ev) = decode_event(v.value()) {
                    history.push(ev);
                }
            }
            (current, history)
        };
        tracing::info!(revision = current, history = history.len(), "store opened");
        let db = Arc::new(db);
        let hub = Arc::new(Hub::new(history, opts.history, current));
        let (writer, rx) = mpsc::channel(4096);
        let (wdb, whub) = (db.clone(), hub.clone());
        let keep = opts.history as u64;
        let writer_thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&wdb, &whub, rx, keep))
            .map_err(backend)?;
        Ok(Self {
            db,
            hub,
            writer,
            writer_thread: Some(writer_thread),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }
}

fn writer_loop(db: &Database, hub: &Hub, mut rx: mpsc::Receiver<Op>, keep: u64) {
    while let Some(first) = rx.blocking_recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        apply_batch(db, hub, ops, keep);
    }
}

enum Outcome {
    Put(Result<KeyValue>),
    Delete(Result<(KeyValue, Revision)>),
}

fn check(key: &str, existing: Option<&KeyValue>, pre: Precondition) -> Result<()> {
    match (pre, existing) {
        (Precondition::None, _) => Ok(()),
        (Precondition::MustNotExist, Some(_)) => Err(StoreError::AlreadyExists(key.to_owned())),
        (Precondition::MustNotExist, None) => Ok(()),
        (Precondition::MustExist | Precondition::ModRevision(_), None) => {
            Err(StoreError::NotFound(key.to_owned()))
        }
        (Precondition::MustExist, Some(_)) => Ok(()),
        (Precondition::ModRevision(want), Some(kv)) if kv.mod_revision != want => {
            Err(StoreError::Conflict {
                key: key.to_owned(),
                expected: want,
                actual: kv.mod_revision,
            })
        }
        (Precondition::ModRevision(_), Some(_)) => Ok(()),
    }
}

/// Applies a batch in one transaction. On a commit failure every op in the
/// batch fails and nothing is published.
fn apply_batch(db: &Database, hub: &Hub, ops: Vec<Op>, keep: u64) {
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::new();
    let result = (|| -> Result<()> {
        let mut w = db.begin_write().map_err(backend)?;
        w.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut kv = w.open_table(KV).map_err(backend)?;
            let mut meta = w.open_table(META).map_err(backend)?;
            let mut hist = w.open_table(HISTORY).map_err(backend)?;
            let mut rev = meta
                .get(REVISION)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            for op in &ops {
                let (key, fence) = match op {
                    Op::Put { key, fence, .. } | Op::Delete { key, fence, .. } => {
                        (key.as_str(), fence.as_ref())
                    }
                };
                // Read inside this transaction: a new term written earlier
                // in the same batch already fences this op.
                if let Some(f) = fence {
                    let at = kv
                        .get(f.key.as_str())
                        .map_err(backend)?
                        .map(|raw| decode_record(&f.key, raw.value()))
                        .transpose()?
                        .map(|r| r.mod_revision);
                    if at != Some(f.mod_revision) {
                        let err = StoreError::Fenced {
                            key: f.key.clone(),
                            expected: f.mod_revision,
                        };
                        outcomes.push(match op {
                            Op::Put { .. } => Outcome::Put(Err(err)),
                            Op::Delete { .. } => Outcome::Delete(Err(err)),
                        });
                        continue;
                    }
                }
                let existing = match kv.get(key).map_err(backend)? {
                    Some(raw) => Some(decode_record(key, raw.value())?),
                    None => None,
                };
                match op {
                    Op::Put { value, pre, .. } => {
                        if let Err(e) = check(key, existing.as_ref(), *pre) {
                            outcomes.push(Outcome::Put(Err(e)));
                            continue;
                        }
                        rev += 1;
                        let create = existing.as_ref().map_or(rev, |e| e.create_revision);
                        kv.insert(key, encode_record(create, rev, value).as_slice())
                            .map_err(backend)?;
                        let new = KeyValue {
                            key: key.to_owned(),
                            value: value.clone(),
                            create_revision: create,
                            mod_revision: rev,
                        };
                        let ev = Event::Put {
                            kv: new.clone(),
                            prev: existing,
                        };
                        hist.insert(rev, encode_event(&ev).as_slice())
                            .map_err(backend)?;
                        events.push(ev);
                        outcomes.push(Outcome::Put(Ok(new)));
                    }
                    Op::Delete { pre, .. } => {
                        if let Err(e) = check(key, existing.as_ref(), *pre) {
                            outcomes.push(Outcome::Delete(Err(e)));
                            continue;
                        }
                        let Some(prev) = existing else {
                            outcomes
                                .push(Outcome::Delete(Err(StoreError::NotFound(key.to_owned()))));
                            continue;
                        };
                        rev += 1;
                        kv.remove(key).map_err(backend)?;
                        let ev = Event::Delete {
                            prev: prev.clone(),
                            revision: rev,
                        };
                        hist.insert(rev, encode_event(&ev).as_slice())
                            .map_err(backend)?;
                        events.push(ev);
                        outcomes.push(Outcome::Delete(Ok((prev, rev))));
                    }
                }
            }
            meta.insert(REVISION, rev).map_err(backend)?;
            let cut = rev.saturating_sub(keep);
            if cut > 0 {
                hist.retain_in(..cut, |_, _| false).map_err(backend)?;
            }
        }
        w.commit().map_err(backend)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            hub.publish(events);
            for (op, out) in ops.into_iter().zip(outcomes) {
                match (op, out) {
                    (Op::Put { reply, .. }, Outcome::Put(r)) => {
                        let _ = reply.send(r);
                    }
                    (Op::Delete { reply, .. }, Outcome::Delete(r)) => {
                        let _ = reply.send(r);
                    }
                    _ => unreachable!("outcomes are pushed in op order"),
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            let msg = e.to_string();
            for op in ops {
                let err = || StoreError::Backend(msg.clone().into());
                match op {
                    Op::Put { reply, .. } => {
                        let _ = reply.send(Err(err()));
                    }
                    Op::Delete { reply, .. } => {
                        let _ = reply.send(Err(err()));
                    }
                }
            }
        }
    }
}

/// A range read inside one read transaction, as of revision `at`.
///
/// The current table gives every key not written since `at`; for the keys
/// written since, the first change after `at` in the history holds the value
/// they had at `at` (its `prev`), or says they did not exist yet.
/// Keys written after a read's revision: their value then, or `None` if
/// they had none.
type Then = std::collections::BTreeMap<String, Option<KeyValue>>;

/// The revision a read at `at` is served at, and the keys under `prefix`
/// (after `start`) written since.
fn as_of(
    r: &redb::ReadTransaction,
    prefix: &str,
    start: Option<&str>,
    at: Option<Revision>,
) -> Result<(Revision, Then)> {
    let current = r
        .open_table(META)
        .map_err(backend)?
        .get(REVISION)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let at = at.unwrap_or(current);
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current,
        });
    }
    let after_start = |key: &str| start.is_none_or(|s| key > s);
    // Keys written after `at`: their value at `at`, or None if they had none.
    let mut then = Then::default();
    if at < current {
        let hist = r.open_table(HISTORY).map_err(backend)?;
        let oldest = hist
            .first()
            .map_err(backend)?
            .map_or(current + 1, |(k, _)| k.value());
        if oldest > at + 1 {
            return Err(StoreError::Compacted {
                requested: at,
                oldest: oldest.saturating_sub(1),
            });
        }
        for item in hist.range(at + 1..=current).map_err(backend)? {
            let (rev, raw) = item.map_err(backend)?;
            let corrupt = || StoreError::Corrupt(format!("history@{}", rev.value()));
            // Most of the history is other keys: skip them undecoded.
            let k = event_key(raw.value()).ok_or_else(corrupt)?;
            if !k.starts_with(prefix) || !after_start(k) || then.contains_key(k) {
                continue;
            }
            let ev = decode_event(raw.value()).ok_or_else(corrupt)?;
            let key = ev.key().to_owned();
            if !key.starts_with(prefix) || !after_start(&key) || then.contains_key(&key) {
                continue;
            }
            let was = match ev {
                Event::Put { prev, .. } => prev,
                Event::Delete { prev, .. } => Some(prev),
            };
            then.insert(key, was);
        }
    }
    Ok((at, then))
}

/// How many keys under `prefix`, after `start`, there were at `at`; values
/// are not decoded.
fn count_at(
    r: &redb::ReadTransaction,
    prefix: &str,
    start: Option<&str>,
    at: Option<Revision>,
) -> Result<usize> {
    let (_, then) = as_of(r, prefix, start, at)?;
    let t = r.open_table(KV).map_err(backend)?;
    let lower = match start {
        Some(s) if s >= prefix => Bound::Excluded(s),
        _ => Bound::Included(prefix),
    };
    let mut n = then.values().filter(|v| v.is_some()).count();
    for entry in t
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(backend)?
    {
        let (k, _) = entry.map_err(backend)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if !then.contains_key(key) {
            n += 1;
        }
    }
    Ok(n)
}

fn list_at(
    r: &redb::ReadTransaction,
    prefix: &str,
    start: Option<&str>,
    limit: Option<usize>,
    at: Option<Revision>,
) -> Result<Page> {
    let (at, then) = as_of(r, prefix, start, at)?;
    let t = r.open_table(KV).map_err(backend)?;
    let lower = match start {
        Some(s) if s >= prefix => Bound::Excluded(s),
        _ => Bound::Included(prefix),
    };
    let full = |n: usize| limit.is_some_and(|l| n >= l);
    let mut items = Vec::new();
    let mut more = false;
    let mut older = then
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_str(), v)))
        .peekable();
    'scan: for entry in t
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(backend)?
    {
        let (k, v) = entry.map_err(backend)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        while let Some((_, kv)) = older.next_if(|(ok, _)| *ok < key) {
            if full(items.len()) {
                more = true;
                break 'scan;
            }
            items.push(kv.clone());
        }
        if then.contains_key(key) {
            continue;
        }
        if full(items.len()) {
            more = true;
            break;
        }
        items.push(decode_record(key, v.value())?);
    }
    if !more {
        for (_, kv) in older {
            if full(items.len()) {
                more = true;
                break;
            }
            items.push(kv.clone());
        }
    }
    Ok(Page {
        items,
        revision: at,
        more,
    })
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        // A point read is a few microseconds in redb's page cache (readers
        // never wait for the writer): done in place, not handed to the
        // blocking pool and back (two thread switches per read). Lists,
        // which can be long, still go there.
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(KV).map_err(backend)?;
        match t.get(key).map_err(backend)? {
            Some(raw) => Ok(Some(decode_record(key, raw.value())?)),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<Page> {
        let prefix = prefix.to_owned();
        let start = start_after.map(str::to_owned);
        self.blocking(move |db| {
            let r = db.begin_read().map_err(backend)?;
            list_at(&r, &prefix, start.as_deref(), limit, at)
        })
        .await
    }

    async fn count(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        at: Option<Revision>,
    ) -> Result<usize> {
        let prefix = prefix.to_owned();
        let start = start_after.map(str::to_owned);
        self.blocking(move |db| {
            let r = db.begin_read().map_err(backend)?;
            count_at(&r, &prefix, start.as_deref(), at)
        })
        .await
    }

    async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<KeyValue> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Op::Put {
                key: key.to_owned(),
                value,
                pre,
                fence: fence.cloned(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn delete_fenced(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<(KeyValue, Revision)> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Op::Delete {
                key: key.to_owned(),
                pre,
                fence: fence.cloned(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        self.hub.watch(prefix, after)
    }

    fn revision(&self) -> Revision {
        self.hub.current()
    }

    async fn check(&self) -> Result<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        self.get("/health").await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> RedbStore {
        RedbStore::open(dir, StoreOptions { history: 5 }).unwrap()
    }

    #[tokio::test]
    async fn crud_with_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = s
            .put("/a/1", Bytes::from_static(b"x"), Precondition::MustNotExist)
            .await
            .unwrap();
        assert_eq!(a.mod_revision, 1);
        assert!(matches!(
            s.put("/a/1", Bytes::from_static(b"y"), Precondition::MustNotExist)
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
        let b = s
            .put(
                "/a/1",
                Bytes::from_static(b"y"),
                Precondition::ModRevision(1),
            )
            .await
            .unwrap();
        assert_eq!((b.create_revision, b.mod_revision), (1, 2));
        assert!(matches!(
            s.put(
                "/a/1",
                Bytes::from_static(b"z"),
                Precondition::ModRevision(1)
            )
            .await,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        s.put("/a/2", Bytes::from_static(b"2"), Precondition::None)
            .await
            .unwrap();
        s.put("/b/1", Bytes::from_static(b"3"), Precondition::None)
            .await
            .unwrap();
        let page = s.list("/a/", None, Some(1), None).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.more);
        let page2 = s
            .list("/a/", Some(&page.items[0].key), Some(5), None)
            .await
            .unwrap();
        assert_eq!(page2.items[0].key, "/a/2");
        assert!(!page2.more);
        let (prev, rev) = s.delete("/a/1", Precondition::None).await.unwrap();
        assert_eq!((prev.value.as_ref(), rev), (&b"y"[..], 5));
        assert!(s.get("/a/1").await.unwrap().is_none());
        assert_eq!(s.revision(), 5);
    }

    #[tokio::test]
    async fn survives_reopen_and_resumes_watch() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            for i in 0..8 {
                s.put(
                    &format!("/k/{i}"),
                    Bytes::from(i.to_string()),
                    Precondition::None,
                )
                .await
                .unwrap();
            }
        }
        let s = open(dir.path());
        assert_eq!(s.revision(), 8);
        assert_eq!(
            s.list("/k/", None, None, None).await.unwrap().items.len(),
            8
        );
        // History keeps 5: revisions 4..=8 are watchable, 3 and older compacted.
        assert!(matches!(
            s.watch("/k/", 1),
            Err(StoreError::Compacted { .. })
        ));
        let mut w = s.watch("/k/", 6).unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision(), 7);
        assert_eq!(w.next().await.unwrap().unwrap().revision(), 8);
        s.delete("/k/0", Precondition::None).await.unwrap();
        let ev = w.next().await.unwrap().unwrap();
        assert!(matches!(&*ev, Event::Delete { revision: 9, .. }));
    }

    #[tokio::test]
    async fn pages_read_at_the_first_pages_revision() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path(), StoreOptions { history: 100 }).unwrap();
        for i in 0..6 {
            s.put(
                &format!("/k/{i}"),
                Bytes::from(format!("v{i}")),
                Precondition::None,
            )
            .await
            .unwrap();
        }
        s.put("/other", Bytes::from_static(b"x"), Precondition::None)
            .await
            .unwrap();
        let first = s.list("/k/", None, Some(2), None).await.unwrap();
        let at = first.revision;
        assert_eq!(at, 7);
        // Writes after the first page: an update, a delete, creates before
        // and after the cursor, and a key that comes and goes.
        s.put("/k/3", Bytes::from_static(b"new"), Precondition::None)
            .await
            .unwrap();
        s.delete("/k/4", Precondition::None).await.unwrap();
        s.put("/k/0a", Bytes::from_static(b"late"), Precondition::None)
            .await
            .unwrap();
        s.put("/k/9", Bytes::from_static(b"late"), Precondition::None)
            .await
            .unwrap();
        s.put("/k/35", Bytes::from_static(b"brief"), Precondition::None)
            .await
            .unwrap();
        s.delete("/k/35", Precondition::None).await.unwrap();
        let mut seen: Vec<(String, Bytes)> = first
            .items
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let mut cursor = first.items.last().map(|kv| kv.key.clone());
        loop {
            let p = s
                .list("/k/", cursor.as_deref(), Some(2), Some(at))
                .await
                .unwrap();
            assert_eq!(p.revision, at);
            assert!(p.items.iter().all(|kv| kv.mod_revision <= at));
            seen.extend(p.items.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
            cursor = p.items.last().map(|kv| kv.key.clone());
            if !p.more {
                break;
            }
        }
        let want: Vec<(String, Bytes)> = (0..6)
            .map(|i| (format!("/k/{i}"), Bytes::from(format!("v{i}"))))
            .collect();
        assert_eq!(seen, want);
        // The newest revision still reads the current state.
        let now = s.list("/k/", None, None, None).await.unwrap();
        let keys: Vec<&str> = now.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/k/0", "/k/0a", "/k/1", "/k/2", "/k/3", "/k/5", "/k/9"]
        );
        // Once the history no longer reaches back, the revision is gone.
        for i in 0..120 {
            s.put("/churn", Bytes::from(i.to_string()), Precondition::None)
                .await
                .unwrap();
        }
        assert!(matches!(
            s.list("/k/", None, Some(2), Some(at)).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(matches!(
            s.list("/k/", None, None, Some(s.revision() + 1)).await,
            Err(StoreError::FutureRevision { .. })
        ));
    }
}
