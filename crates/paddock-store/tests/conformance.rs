//! The store's semantics, checked the same way on both backends: the
//! embedded redb store and a real etcd cluster (three members on
//! loopback, TLS and client certificates, `paddock_etcd::LocalCluster`).
//! Revisions are compared relative to each other: etcd starts at 1 with
//! nothing written, redb at 0.

use std::sync::Arc;

use bytes::Bytes;
use paddock_store::{
    DynStore, EtcdOptions, EtcdStore, Event, Fence, Precondition, RedbStore, Revision, Store,
    StoreError, StoreOptions,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn put(s: &dyn Store, key: &str, v: &str) -> Revision {
    s.put(key, b(v), Precondition::None)
        .await
        .expect("put")
        .mod_revision
}

async fn crud_with_preconditions(s: &dyn Store) {
    let a = s
        .put("/a/1", b("x"), Precondition::MustNotExist)
        .await
        .expect("create");
    assert_eq!(a.create_revision, a.mod_revision);
    assert!(matches!(
        s.put("/a/1", b("y"), Precondition::MustNotExist).await,
        Err(StoreError::AlreadyExists(k)) if k == "/a/1"
    ));
    let upd = s
        .put("/a/1", b("y"), Precondition::ModRevision(a.mod_revision))
        .await
        .expect("update at its revision");
    assert_eq!(upd.create_revision, a.create_revision);
    assert_eq!(upd.mod_revision, a.mod_revision + 1);
    match s
        .put("/a/1", b("z"), Precondition::ModRevision(a.mod_revision))
        .await
    {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (a.mod_revision, upd.mod_revision)),
        other => panic!("stale update: {other:?}"),
    }
    assert!(matches!(
        s.put("/a/none", b("v"), Precondition::ModRevision(a.mod_revision))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.put("/a/none", b("v"), Precondition::MustExist).await,
        Err(StoreError::NotFound(_))
    ));
    s.put("/a/1", b("w"), Precondition::MustExist)
        .await
        .expect("update of an existing key");
    let got = s.get("/a/1").await.expect("get").expect("present");
    assert_eq!(got.value, b("w"));
    assert!(s.get("/a/none").await.expect("get").is_none());

    put(s, "/a/2", "2").await;
    put(s, "/b/1", "3").await;
    let page = s.list("/a/", None, Some(1), None).await.expect("list");
    assert_eq!(page.items.len(), 1);
    assert!(page.more);
    let rest = s
        .list("/a/", Some(&page.items[0].key), Some(5), None)
        .await
        .expect("next page");
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].key, "/a/2");
    assert!(!rest.more);

    let before = s.revision();
    assert!(matches!(
        s.delete("/a/1", Precondition::ModRevision(a.mod_revision))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let (prev, rev) = s.delete("/a/1", Precondition::None).await.expect("delete");
    assert_eq!(prev.value, b("w"));
    assert!(rev > before);
    assert!(s.get("/a/1").await.expect("get").is_none());
    assert!(matches!(
        s.delete("/a/1", Precondition::None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.current_revision().await.expect("current"), rev);
    assert_eq!(s.revision(), rev);
}

async fn pages_read_at_one_revision(s: &dyn Store) {
    for i in 0..6 {
        put(s, &format!("/k/{i}"), &format!("v{i}")).await;
    }
    put(s, "/other", "x").await;
    let first = s
        .list("/k/", None, Some(2), None)
        .await
        .expect("first page");
    let at = first.revision;
    put(s, "/k/3", "new").await;
    s.delete("/k/4", Precondition::None).await.expect("delete");
    put(s, "/k/0a", "late").await;
    put(s, "/k/9", "late").await;
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
            .expect("page at the first page's revision");
        assert_eq!(p.revision, at);
        assert!(p.items.iter().all(|kv| kv.mod_revision <= at));
        // What is left after the page before, counted without reading it.
        let left = s
            .count("/k/", cursor.as_deref(), Some(at))
            .await
            .expect("count at the first page's revision");
        assert_eq!(left, 6 - seen.len(), "keys left after {cursor:?} at {at}");
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
    let now = s.list("/k/", None, None, None).await.expect("list now");
    let keys: Vec<&str> = now.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/k/0", "/k/0a", "/k/1", "/k/2", "/k/3", "/k/5", "/k/9"]
    );
    assert_eq!(s.count("/k/", None, None).await.expect("count now"), 7);
    assert_eq!(s.count("/k/", Some("/k/2"), None).await.expect("count"), 3);
    let future = s.current_revision().await.expect("current") + 1000;
    assert!(matches!(
        s.list("/k/", None, None, Some(future)).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn watches_resume_from_a_revision(s: &dyn Store) {
    let start = s.current_revision().await.expect("current");
    let r1 = put(s, "/w/a", "1").await;
    let r2 = put(s, "/w/a", "2").await;
    put(s, "/elsewhere", "x").await;
    // From before the writes: both, in order, with the value each replaced.
    let mut w = s.watch("/w/", start).expect("watch");
    let e1 = w.next().await.expect("open").expect("event");
    let e2 = w.next().await.expect("open").expect("event");
    assert_eq!((e1.revision(), e2.revision()), (r1, r2));
    match &*e2 {
        Event::Put { kv, prev } => {
            assert_eq!(kv.value, b("2"));
            assert_eq!(prev.as_ref().map(|p| p.value.clone()), Some(b("1")));
            assert_eq!(kv.create_revision, r1);
        }
        other => panic!("{other:?}"),
    }
    // Then live: a delete carries the last value.
    let (_, rd) = s.delete("/w/a", Precondition::None).await.expect("delete");
    let e3 = w.next().await.expect("open").expect("event");
    match &*e3 {
        Event::Delete { prev, revision } => {
            assert_eq!((prev.value.clone(), *revision), (b("2"), rd));
        }
        other => panic!("{other:?}"),
    }
    // From the middle: only what came after.
    let mut w = s.watch("/w/", r1).expect("watch");
    assert_eq!(w.next().await.expect("open").expect("event").revision(), r2);
}

/// Writes fenced by a term's key hold while the key is unchanged and fail,
/// changing nothing, once a new term rewrote it.
async fn fenced_writes_fail_after_a_new_term(s: &dyn Store) {
    let term = |rev| Fence {
        key: "/leader/term".into(),
        mod_revision: rev,
    };
    let first = term(put(s, "/leader/term", "a").await);
    s.put_fenced("/f/1", b("v"), Precondition::MustNotExist, Some(&first))
        .await
        .expect("a write of the current term");
    let second = term(put(s, "/leader/term", "b").await);
    assert!(matches!(
        s.put_fenced("/f/2", b("v"), Precondition::None, Some(&first)).await,
        Err(StoreError::Fenced { expected, .. }) if expected == first.mod_revision
    ));
    assert!(matches!(
        s.delete_fenced("/f/1", Precondition::None, Some(&first))
            .await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(s.get("/f/2").await.expect("get").is_none());
    assert!(s.get("/f/1").await.expect("get").is_some());
    s.put_fenced("/f/2", b("v"), Precondition::None, Some(&second))
        .await
        .expect("a write of the new term");
    s.delete_fenced("/f/1", Precondition::None, Some(&second))
        .await
        .expect("a delete of the new term");
    // A precondition that fails is still reported as itself.
    assert!(matches!(
        s.put_fenced("/f/2", b("v"), Precondition::MustNotExist, Some(&second))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
}

/// A watch or a read at a revision the store no longer keeps fails as
/// compacted; `compact` makes the backend forget revisions up to the one given.
async fn compacted_revisions_are_refused<F, Fut>(s: &dyn Store, compact: F)
where
    F: FnOnce(Revision) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let old = put(s, "/c/k", "0").await;
    for i in 1..=20 {
        put(s, "/c/k", &i.to_string()).await;
    }
    compact(s.revision()).await;
    // Refused at once (redb) or as the watch's first answer (etcd).
    let end = match s.watch("/c/", old) {
        Err(e) => e,
        Ok(mut w) => loop {
            match w.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the watch ended without an error"),
            }
        },
    };
    assert!(matches!(end, StoreError::Compacted { .. }), "{end:?}");
    assert!(matches!(
        s.list("/c/", None, None, Some(old)).await,
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test]
async fn redb_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = RedbStore::open(dir.path(), StoreOptions { history: 10 }).expect("open");
    crud_with_preconditions(&s).await;
    pages_read_at_one_revision(&s).await;
    watches_resume_from_a_revision(&s).await;
    fenced_writes_fail_after_a_new_term(&s).await;
    // redb keeps `history` changes; writing more forgets the oldest.
    compacted_revisions_are_refused(&s, |_| async {}).await;
}

async fn etcd_store(cluster: &paddock_etcd::LocalCluster, root: &str) -> EtcdStore {
    let mut opts = EtcdOptions::new(cluster.endpoints());
    opts.ca_pem = Some(cluster.pki.ca_pem.clone().into_bytes());
    opts.client_cert_pem = Some((
        cluster.pki.client.cert_pem.clone().into_bytes(),
        cluster.pki.client.key_pem.clone().into_bytes(),
    ));
    opts.root = root.to_owned();
    EtcdStore::connect(opts).await.expect("connect to etcd")
}

#[tokio::test]
async fn etcd_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = paddock_etcd::LocalCluster::start(dir.path(), 3)
        .await
        .expect("etcd cluster");
    let s = Arc::new(etcd_store(&cluster, "/conformance").await);
    crud_with_preconditions(&*s).await;
    pages_read_at_one_revision(&*s).await;
    watches_resume_from_a_revision(&*s).await;
    fenced_writes_fail_after_a_new_term(&*s).await;
    let c = s.clone();
    compacted_revisions_are_refused(&*s, |rev| async move {
        c.compact(rev).await.expect("compact");
    })
    .await;

    // Keys outside the root are not this store's: another root on the same
    // etcd sees none of them.
    let other = etcd_store(&cluster, "/elsewhere").await;
    assert!(
        other
            .list("/", None, None, None)
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

/// Two stores on one etcd are two server replicas: a write through one is
/// seen by the other's current revision, reads and watches, and
/// compare-and-swap holds between them.
#[tokio::test]
async fn etcd_replicas_share_one_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = paddock_etcd::LocalCluster::start(dir.path(), 1)
        .await
        .expect("etcd");
    let a: DynStore = Arc::new(etcd_store(&cluster, "/paddock").await);
    let b_: DynStore = Arc::new(etcd_store(&cluster, "/paddock").await);
    let from = b_.current_revision().await.expect("current");
    let mut w = b_.watch("/x/", from).expect("watch");
    let kv = a
        .put("/x/1", b("v"), Precondition::MustNotExist)
        .await
        .expect("create");
    assert!(b_.current_revision().await.expect("current") >= kv.mod_revision);
    assert_eq!(
        b_.get("/x/1").await.expect("get").map(|kv| kv.value),
        Some(b("v"))
    );
    assert_eq!(
        w.next().await.expect("open").expect("event").revision(),
        kv.mod_revision
    );
    // Both replicas update from the same revision: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.put("/x/1", b("a"), Precondition::ModRevision(kv.mod_revision)),
        b_.put("/x/1", b("b"), Precondition::ModRevision(kv.mod_revision)),
    );
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{ra:?} {rb:?}"
    );
}
