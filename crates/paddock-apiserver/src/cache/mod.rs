//! The watch cache, as kube-apiserver keeps one: every object of every
//! resource in memory at a known revision, fed by one watch on the store.
//!
//! Lists and `resourceVersion=0` gets are served from it; a list that must
//! be current (`resourceVersion` unset) first waits until the cache has
//! applied the store's revision of the moment, so it is one consistent
//! snapshot no older than the request. Watches are served from the recent
//! changes it keeps; each change is decoded once, and each watch line
//! encoded once and shared by every watcher. A watcher whose queue fills
//! is closed with an error rather than buffered without bound.

pub mod entry;
mod index;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use paddock_store::{DynStore, Event, Revision, StoreError};
use tokio::sync::{mpsc, watch};

pub use entry::{Change, Entry, EventType};
pub use index::Objects;

use crate::resources::{self, Resource};

/// Tunables of the cache.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Changes kept per resource for watches that resume.
    pub history: usize,
    /// Changes a watcher may have waiting before it is closed as too slow.
    pub watcher_queue: usize,
    /// How long a read waits for the cache to reach the revision it needs
    /// before it goes to the store instead.
    pub fresh_wait: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            history: 20_000,
            watcher_queue: 4096,
            fresh_wait: Duration::from_secs(3),
        }
    }
}

/// Why the cache closed a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The watcher left this many changes unread.
    TooSlow(usize),
    /// The cache lost its store watch and read everything again.
    Reset,
}

struct Subscriber {
    /// Keys the watcher wants (a resource's, or one namespace's).
    prefix: String,
    tx: mpsc::Sender<Arc<Change>>,
    ended: Arc<OnceLock<WatchEnd>>,
}

struct ResourceState {
    res: &'static Resource,
    objects: Objects,
    changes: VecDeque<Arc<Change>>,
    /// Every change after this revision is in `changes`.
    complete_after: Revision,
    /// No object of this resource changed after this revision.
    changed_at: Revision,
    watchers: Vec<Subscriber>,
}

impl ResourceState {
    fn new(res: &'static Resource, objects: Objects, at: Revision) -> Self {
        Self {
            res,
            objects,
            changes: VecDeque::new(),
            complete_after: at,
            changed_at: at,
            watchers: Vec::new(),
        }
    }

    fn close_watchers(&mut self, why: WatchEnd) {
        for w in self.watchers.drain(..) {
            let _ = w.ended.set(why);
        }
    }
}

struct State {
    synced: bool,
    /// Every change up to here is applied.
    revision: Revision,
    resources: Vec<ResourceState>,
}

/// The cache of every resource. Cheap to share; [`WatchCache::run`] feeds it.
pub struct WatchCache {
    state: Mutex<State>,
    /// The revision applied, once synced (`None` while reading the store).
    applied: watch::Sender<Option<Revision>>,
    /// Each resource's key prefix, in the order of `resources::RESOURCES`.
    prefixes: Vec<String>,
    opts: CacheOptions,
}

/// A watch served from the cache.
pub struct CacheWatch {
    /// The revision it starts after.
    pub start: Revision,
    /// For a watch from now: the objects at `start`, to send as ADDED.
    pub initial: Option<Objects>,
    /// Kept changes after `start`, then the live ones.
    backlog: VecDeque<Arc<Change>>,
    rx: mpsc::Receiver<Arc<Change>>,
    ended: Arc<OnceLock<WatchEnd>>,
}

impl CacheWatch {
    /// Nothing is waiting to be read.
    pub fn idle(&self) -> bool {
        self.backlog.is_empty() && self.rx.is_empty()
    }

    /// The next change, `Ok(None)` if the cache is gone, or why it ended.
    pub async fn next(&mut self) -> Result<Option<Arc<Change>>, WatchEnd> {
        if let Some(c) = self.backlog.pop_front() {
            return Ok(Some(c));
        }
        loop {
            match self.rx.recv().await {
                Some(c) if c.revision <= self.start => continue,
                Some(c) => return Ok(Some(c)),
                None => return self.ended.get().map_or(Ok(None), |e| Err(*e)),
            }
        }
    }
}

/// What a read from the cache found.
pub struct Snapshot {
    pub objects: Objects,
    pub revision: Revision,
    /// No object of the resource changed after this revision: the
    /// objects are also those of every revision from here to `revision`.
    pub changed_at: Revision,
}

impl WatchCache {
    pub fn new(opts: CacheOptions) -> Arc<Self> {
        let resources = resources::RESOURCES
            .iter()
            .map(|r| ResourceState::new(r, Objects::new(r), 0))
            .collect();
        Arc::new(Self {
            state: Mutex::new(State {
                synced: false,
                revision: 0,
                resources,
            }),
            applied: watch::channel(None).0,
            prefixes: resources::RESOURCES
                .iter()
                .map(|r| r.prefix(None))
                .collect(),
            opts,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is made whole under the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_of(res: &Resource) -> Option<usize> {
        resources::RESOURCES
            .iter()
            .position(|r| std::ptr::eq(r, res))
    }

    /// Whether the cache holds the store's contents.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The revision applied so far.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// Waits (up to the configured time) until the cache has applied `min`.
    pub async fn wait_for(&self, min: Revision) -> bool {
        let mut rx = self.applied.subscribe();
        let ready = rx.wait_for(|r| r.is_some_and(|r| r >= min));
        matches!(
            tokio::time::timeout(self.opts.fresh_wait, ready).await,
            Ok(Ok(_))
        )
    }

    /// The objects of `res` as of the cache's revision, if it is synced.
    pub fn snapshot(&self, res: &Resource) -> Option<Snapshot> {
        let g = self.lock();
        if !g.synced {
            return None;
        }
        let r = &g.resources[Self::index_of(res)?];
        Some(Snapshot {
            objects: r.objects.clone(),
            revision: g.revision,
            changed_at: r.changed_at,
        })
    }

    /// One object as of the cache's revision (`None` inside when absent).
    pub fn get(&self, res: &Resource, key: &str) -> Option<Option<Arc<Entry>>> {
        let g = self.lock();
        if !g.synced {
            return None;
        }
        let r = &g.resources[Self::index_of(res)?];
        Some(r.objects.get(key).cloned())
    }

    /// A watch of the keys under `prefix`: from now (with the objects as
    /// they are) when `after` is `None`, else of the changes after that
    /// revision. `None` when the cache cannot serve it (not synced, or the
    /// revision is older than the changes it keeps): the store can.
    pub fn watch(
        &self,
        res: &Resource,
        prefix: &str,
        after: Option<Revision>,
    ) -> Option<CacheWatch> {
        let mut g = self.lock();
        if !g.synced {
            return None;
        }
        let revision = g.revision;
        let r = &mut g.resources[Self::index_of(res)?];
        let (start, initial, backlog) = match after {
            None => (revision, Some(r.objects.clone()), VecDeque::new()),
            Some(rv) if rv >= r.complete_after => {
                let backlog = r
                    .changes
                    .iter()
                    .filter(|c| c.revision > rv && c.key().starts_with(prefix))
                    .cloned()
                    .collect();
                (rv, None, backlog)
            }
            Some(_) => return None,
        };
        let (tx, rx) = mpsc::channel(self.opts.watcher_queue.max(1));
        let ended = Arc::new(OnceLock::new());
        r.watchers.push(Subscriber {
            prefix: prefix.to_owned(),
            tx,
            ended: ended.clone(),
        });
        Some(CacheWatch {
            start,
            initial,
            backlog,
            rx,
            ended,
        })
    }

    /// Watchers registered now (for tests and metrics).
    pub fn watchers(&self) -> usize {
        self.lock().resources.iter().map(|r| r.watchers.len()).sum()
    }

    /// Objects held, per resource plural (for metrics and the benchmark).
    pub fn sizes(&self) -> Vec<(&'static str, usize)> {
        self.lock()
            .resources
            .iter()
            .map(|r| (r.res.plural, r.objects.len()))
            .collect()
    }

    /// Feeds the cache from `store` for as long as it runs: reads every
    /// resource at one revision, then follows the store's changes; if the
    /// watch fails, reads everything again (closing the watches it served).
    pub async fn run(self: Arc<Self>, store: DynStore) {
        loop {
            let err = self.follow(&store).await;
            tracing::warn!(error = %crate::error::chain(&err), "watch cache lost the store; reading it again");
            {
                let mut g = self.lock();
                g.synced = false;
                for r in &mut g.resources {
                    r.close_watchers(WatchEnd::Reset);
                }
            }
            self.applied.send_replace(None);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn follow(&self, store: &DynStore) -> StoreError {
        let at = match store.current_revision().await {
            Ok(at) => at,
            Err(e) => return e,
        };
        let mut fresh = Vec::with_capacity(resources::RESOURCES.len());
        for res in resources::RESOURCES.iter() {
            match load(store, res, at).await {
                Ok(objects) => fresh.push(ResourceState::new(res, objects, at)),
                Err(e) => return e,
            }
        }
        // Watch before installing, so no change after `at` is missed.
        let mut w = match store.watch("", at) {
            Ok(w) => w,
            Err(e) => return e,
        };
        {
            let mut g = self.lock();
            for r in &mut g.resources {
                r.close_watchers(WatchEnd::Reset);
            }
            g.resources = fresh;
            g.revision = at;
            g.synced = true;
        }
        self.applied.send_replace(Some(at));
        tracing::info!(revision = at, "watch cache synced");
        loop {
            match w.next().await {
                Some(Ok(ev)) => self.apply(&ev),
                Some(Err(e)) => return e,
                None => return StoreError::Closed,
            }
        }
    }

    /// Applies one committed change, and hands it to the watchers that want it.
    fn apply(&self, ev: &Event) {
        let rev = ev.revision();
        let i = self.prefixes.iter().position(|p| ev.key().starts_with(p));
        // Decoded outside the lock.
        let decoded = i.map(|i| {
            let res = &resources::RESOURCES[i];
            let entry = match ev {
                Event::Put { kv, .. } => Entry::new(res, kv, None),
                Event::Delete { prev, revision } => Entry::new(res, prev, Some(*revision)),
            };
            (i, entry)
        });
        let mut g = self.lock();
        if let Some((i, entry)) = decoded {
            let history = self.opts.history;
            let r = &mut g.resources[i];
            r.changed_at = r.changed_at.max(rev);
            let change = match (ev, entry) {
                (Event::Put { .. }, Ok(e)) => {
                    let e = Arc::new(e);
                    let prev = r.objects.insert(e.clone());
                    Some(Change::new(rev, e, prev, false))
                }
                (Event::Delete { .. }, Ok(e)) => {
                    let prev = r.objects.remove(ev.key());
                    Some(Change::new(rev, Arc::new(e), prev, true))
                }
                (_, Err(e)) => {
                    // Only the API writes here, so this is a damaged record:
                    // drop the key rather than serve what it was.
                    tracing::error!(key = ev.key(), error = %e, "watch cache cannot decode a change; dropping the key");
                    r.objects.remove(ev.key());
                    None
                }
            };
            if let Some(change) = change {
                let change = Arc::new(change);
                r.changes.push_back(change.clone());
                while r.changes.len() > history {
                    if let Some(old) = r.changes.pop_front() {
                        r.complete_after = old.revision;
                    }
                }
                r.watchers.retain(|w| {
                    if !change.key().starts_with(&w.prefix) {
                        return !w.tx.is_closed();
                    }
                    match w.tx.try_send(change.clone()) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let _ = w.ended.set(WatchEnd::TooSlow(w.tx.max_capacity()));
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                });
            }
        }
        g.revision = g.revision.max(rev);
        drop(g);
        self.applied.send_replace(Some(rev));
    }
}

/// Every object of `res` at revision `at`, page by page.
async fn load(
    store: &DynStore,
    res: &'static Resource,
    at: Revision,
) -> Result<Objects, StoreError> {
    let prefix = res.prefix(None);
    let mut objects = Objects::new(res);
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list(&prefix, after.as_deref(), Some(1000), Some(at))
            .await?;
        for kv in &page.items {
            match Entry::new(res, kv, None) {
                Ok(e) => {
                    objects.insert(Arc::new(e));
                }
                Err(e) => {
                    tracing::error!(key = kv.key, error = %e, "watch cache skips a record it cannot decode")
                }
            }
        }
        if !page.more {
            return Ok(objects);
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use paddock_store::{Precondition, RedbStore, StoreOptions};
    use serde_json::json;

    use super::*;
    use crate::selector::{FieldSelector, LabelSelector};

    fn machines() -> &'static Resource {
        resources::find("paddock.io", "v1alpha1", "machines").expect("machines")
    }

    fn machine(ns: &str, name: &str, host: &str, cluster: &str) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&json!({
                "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
                "metadata": {"name": name, "namespace": ns, "labels": {"paddock.io/cluster": cluster}},
                "spec": {"clusterName": cluster, "hostName": host, "role": "worker", "cpu": 1, "memory": "1Gi"}
            }))
            .expect("json"),
        )
    }

    /// Writes Machine `ns/name` on `host` of `cluster`.
    async fn put(store: &DynStore, ns: &str, name: &str, host: &str, cluster: &str) {
        store
            .put(
                &machines().key(Some(ns), name),
                machine(ns, name, host, cluster),
                Precondition::None,
            )
            .await
            .expect("put");
    }

    fn store(dir: &std::path::Path) -> DynStore {
        Arc::new(RedbStore::open(dir, StoreOptions { history: 100_000 }).expect("store"))
    }

    async fn synced(store: &DynStore, opts: CacheOptions) -> Arc<WatchCache> {
        let cache = WatchCache::new(opts);
        tokio::spawn(cache.clone().run(store.clone()));
        assert!(cache.wait_for(store.revision()).await, "cache syncs");
        cache
    }

    /// (key, mod revision, value) of every object `res` has at `rev`, as the store reads it.
    async fn store_at(store: &DynStore, prefix: &str, rev: Revision) -> Vec<(String, Revision)> {
        let page = store
            .list(prefix, None, None, Some(rev))
            .await
            .expect("list");
        page.items
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect()
    }

    fn cached(snap: &Snapshot, prefix: &str) -> Vec<(String, Revision)> {
        let all = (LabelSelector::default(), FieldSelector::default());
        snap.objects
            .select(prefix, None, &all.0, &all.1, None)
            .0
            .iter()
            .map(|e| (e.key.to_string(), e.mod_revision))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_and_watches_match_the_store_at_the_same_revision_under_racing_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let res = machines();
        let prefix = res.prefix(None);
        for i in 0..50 {
            put(&store, "acme", &format!("m{i}"), "h0", "c0").await;
        }
        let cache = synced(&store, CacheOptions::default()).await;
        let from = store.revision();
        let watch = cache.watch(res, &prefix, Some(from)).expect("watch");
        let store_watch = store.watch(&prefix, from).expect("store watch");
        // Writers: creates, updates (moving between hosts) and deletes, racing.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..300u32 {
                        let name = format!("m{}", (n * 7 + w * 13) % 80);
                        let key = res.key(Some(if n % 3 == 0 { "beta" } else { "acme" }), &name);
                        if n % 5 == 4 {
                            let _ = store.delete(&key, Precondition::None).await;
                        } else {
                            let host = format!("h{}", n % 4);
                            store
                                .put(
                                    &key,
                                    machine("acme", &name, &host, "c0"),
                                    Precondition::None,
                                )
                                .await
                                .expect("put");
                        }
                    }
                })
            })
            .collect();
        // Meanwhile every snapshot equals the store read at its revision.
        let mut compared = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            let snap = cache.snapshot(res).expect("synced");
            assert_eq!(
                cached(&snap, &prefix),
                store_at(&store, &prefix, snap.revision).await,
                "the cache at revision {} is the store at that revision",
                snap.revision
            );
            compared += 1;
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.expect("writer");
        }
        assert!(compared > 1, "snapshots compared while writes raced");
        let end = store.revision();
        assert!(cache.wait_for(end).await);
        let snap = cache.snapshot(res).expect("synced");
        assert_eq!(cached(&snap, &prefix), store_at(&store, &prefix, end).await);
        // The watch from the cache saw the same changes as the store's own.
        let changes = |mut w: CacheWatch| async move {
            let mut out = Vec::new();
            while let Ok(Some(c)) = w.next().await {
                out.push((c.revision, c.key().to_owned(), c.deleted));
                if c.revision >= end {
                    break;
                }
            }
            out
        };
        let mut sw = store_watch;
        let mut want = Vec::new();
        while let Some(Ok(ev)) = sw.next().await {
            want.push((
                ev.revision(),
                ev.key().to_owned(),
                matches!(&*ev, Event::Delete { .. }),
            ));
            if ev.revision() >= end {
                break;
            }
        }
        assert_eq!(changes(watch).await, want);
        // Indexes answer as a scan would.
        let hosts = FieldSelector::parse("spec.hostName=h2", res.field_labels).expect("selector");
        let scan: Vec<String> = cached(&snap, &res.prefix(Some("acme")))
            .into_iter()
            .filter(|(k, _)| {
                snap.objects
                    .get(k)
                    .is_some_and(|e| e.field(res, "spec.hostName") == "h2")
            })
            .map(|(k, _)| k)
            .collect();
        let indexed: Vec<String> = snap
            .objects
            .select(
                &res.prefix(Some("acme")),
                None,
                &LabelSelector::default(),
                &hosts,
                None,
            )
            .0
            .iter()
            .map(|e| e.key.to_string())
            .collect();
        assert!(!indexed.is_empty());
        assert_eq!(indexed, scan);
    }

    #[tokio::test]
    async fn a_restarted_store_is_read_again_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let res = machines();
        let prefix = res.prefix(None);
        {
            let store = store(dir.path());
            for i in 0..30 {
                put(&store, "acme", &format!("m{i}"), "h1", "c1").await;
            }
            store
                .delete(&res.key(Some("acme"), "m3"), Precondition::None)
                .await
                .expect("delete");
        }
        let store = store(dir.path());
        let cache = synced(&store, CacheOptions::default()).await;
        let snap = cache.snapshot(res).expect("synced");
        assert_eq!(snap.revision, 31);
        assert_eq!(cached(&snap, &prefix), store_at(&store, &prefix, 31).await);
        assert_eq!(cached(&snap, &prefix).len(), 29);
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_read_is_closed_not_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let res = machines();
        let cache = synced(
            &store,
            CacheOptions {
                watcher_queue: 8,
                ..CacheOptions::default()
            },
        )
        .await;
        let mut slow = cache
            .watch(res, &res.prefix(None), Some(store.revision()))
            .expect("watch");
        let mut other_ns = cache
            .watch(res, &res.prefix(Some("beta")), Some(store.revision()))
            .expect("watch");
        assert_eq!(cache.watchers(), 2);
        for i in 0..20 {
            put(&store, "acme", &format!("m{i}"), "h1", "c1").await;
        }
        assert!(cache.wait_for(store.revision()).await);
        let mut read = 0;
        let end = loop {
            match slow.next().await {
                Ok(Some(_)) => read += 1,
                other => break other,
            }
        };
        assert_eq!(read, 8, "what was queued is still delivered");
        assert_eq!(end.err(), Some(WatchEnd::TooSlow(8)));
        // A watcher of another namespace saw none of it and is still open.
        assert_eq!(cache.watchers(), 1);
        assert!(other_ns.idle());
        put(&store, "beta", "b", "h1", "c1").await;
        let c = other_ns.next().await.expect("open").expect("change");
        assert_eq!(c.key(), res.key(Some("beta"), "b"));
    }

    #[test]
    fn changes_are_classified_against_the_watchers_selectors() {
        let res = machines();
        let obj = |host: &str| {
            json!({"metadata": {"name": "m", "namespace": "acme", "labels": BTreeMap::from([("team", "a")]), "resourceVersion": "5"},
                   "spec": {"hostName": host}})
        };
        let key = res.key(Some("acme"), "m");
        let e = |host: &str| Arc::new(Entry::from_object(res, &key, 5, &obj(host)));
        let on_h1 = FieldSelector::parse("spec.hostName=h1", res.field_labels).expect("selector");
        let none = LabelSelector::default();
        let moved_in = Change::new(5, e("h1"), Some(e("h2")), false);
        let moved_out = Change::new(6, e("h2"), Some(e("h1")), false);
        let stayed = Change::new(7, e("h1"), Some(e("h1")), false);
        let gone = Change::new(8, e("h1"), Some(e("h1")), true);
        assert_eq!(
            moved_in.classify(res, &none, &on_h1),
            Some(EventType::Added)
        );
        assert_eq!(
            moved_out.classify(res, &none, &on_h1),
            Some(EventType::Deleted)
        );
        assert_eq!(
            stayed.classify(res, &none, &on_h1),
            Some(EventType::Modified)
        );
        assert_eq!(gone.classify(res, &none, &on_h1), Some(EventType::Deleted));
        let other_team = LabelSelector::parse("team=b").expect("selector");
        assert_eq!(
            stayed.classify(res, &other_team, &FieldSelector::default()),
            None
        );
        // One encoding per type, shared.
        let a = stayed.line(EventType::Modified);
        let b = stayed.line(EventType::Modified);
        assert_eq!(a.as_ptr(), b.as_ptr());
        let v: serde_json::Value = serde_json::from_slice(&a).expect("json line");
        assert_eq!(v["type"], "MODIFIED");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "5");
    }
}
