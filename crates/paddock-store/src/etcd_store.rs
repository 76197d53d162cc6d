//! The etcd backend: the same [`Store`] semantics on an etcd cluster, so that
//! several `paddock server` replicas can share one state.
//!
//! etcd's revision is the store revision (and so the API's
//! `resourceVersion`); writes with a precondition are transactions that
//! compare the key's create or mod revision; watches resume from a revision
//! and fail with [`StoreError::Compacted`] once etcd has compacted it away.
//! Every key lives under one root (`/paddock` by default), so one etcd can
//! hold other data beside Paddock's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    Event, Fence, KeyValue, Page, Precondition, Result, Revision, Store, StoreError, Watch,
};

/// Largest gRPC message the client decodes: a page of 1,000 large objects.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// How to reach the etcd cluster.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members, such as `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// PEM of the CA that signed the members' serving certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key presented to etcd.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Every key is stored under this prefix (no trailing slash).
    pub root: String,
    /// How long one request may take before it fails.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field("root", &self.root)
            .finish()
    }
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            ca_pem: None,
            client_cert_pem: None,
            root: "/paddock".to_owned(),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// The store on an etcd cluster.
pub struct EtcdStore {
    client: Client,
    root: String,
    /// The newest revision any answer has shown (for the synchronous
    /// [`Store::revision`]; reads that must be current ask etcd).
    seen: Arc<AtomicU64>,
}

fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// An etcd answer mapped to the store's errors: a compacted or future
/// revision is the caller's to handle, the rest is the backend failing.
fn etcd_error(e: etcd_client::Error, requested: Option<Revision>, current: Revision) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let msg = status.message();
        if msg.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested: requested.unwrap_or(0),
                oldest: 0,
            };
        }
        if msg.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested: requested.unwrap_or(0),
                current,
            };
        }
    }
    backend(e)
}

/// Whether a failed request may go again: the connection failed, or the
/// member had no leader or was unavailable (not an answer about the data).
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

/// The key just past every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "\0" range end.
    vec![0]
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(opts: EtcdOptions) -> Result<Self> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoints given".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(ca) = &opts.ca_pem {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &opts.client_cert_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
        }
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(backend)?;
        let store = Self {
            client,
            root: opts.root.trim_end_matches('/').to_owned(),
            seen: Arc::new(AtomicU64::new(0)),
        };
        store.current().await?;
        Ok(store)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// A read of the keys under `prefix` after `start_after`, at revision
    /// `at` (the newest when `None`), with `opts` (a limit, count only).
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        opts: GetOptions,
        at: Option<Revision>,
    ) -> Result<etcd_client::GetResponse> {
        let (full_prefix, start) = self.range_of(prefix, start_after);
        let mut opts = opts.with_range(prefix_end(&full_prefix));
        if let Some(r) = at {
            opts = opts.with_revision(i64::try_from(r).unwrap_or(i64::MAX));
        }
        self.read(|mut kv| {
            let (start, opts) = (start.clone(), opts.clone());
            async move { kv.get(start, Some(opts)).await }
        })
        .await
        .map_err(|e| etcd_error(e, at, self.revision()))
    }

    /// The etcd prefix of `prefix`, and the first etcd key a read of it
    /// after `start_after` starts at.
    fn range_of(&self, prefix: &str, start_after: Option<&str>) -> (String, String) {
        let full_prefix = if prefix.is_empty() {
            self.full("/")
        } else {
            self.full(prefix)
        };
        let start = match start_after {
            // The first key after `s`: `s` followed by the smallest byte.
            Some(s) if self.full(s) >= full_prefix => format!("{}\0", self.full(s)),
            _ => full_prefix.clone(),
        };
        (full_prefix, start)
    }

    /// The store key of an etcd key under the root.
    fn short<'a>(&self, key: &'a [u8]) -> Result<&'a str> {
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.root.as_str()))
            .ok_or_else(|| StoreError::Corrupt(String::from_utf8_lossy(key).into_owned()))
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        Ok(KeyValue {
            key: self.short(kv.key())?.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: revision(kv.create_revision()),
            mod_revision: revision(kv.mod_revision()),
        })
    }

    fn saw(&self, header: Option<&etcd_client::ResponseHeader>) -> Revision {
        let r = header.map_or(0, |h| revision(h.revision()));
        self.seen.fetch_max(r, Ordering::Relaxed);
        r
    }

    /// etcd's current revision, by a linearizable read.
    async fn current(&self) -> Result<Revision> {
        let key = self.full("/health");
        let resp = self
            .read(|mut kv| {
                let key = key.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await
            .map_err(backend)?;
        Ok(self.saw(resp.header()))
    }

    /// Runs a read, again on another connection when the one it went to
    /// failed (a member that died): a read changes nothing, so it is always
    /// safe to repeat. Writes are not repeated: one that failed in flight
    /// may have been applied.
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0u64;
        loop {
            let kv = self
                .client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE);
            match f(kv).await {
                Err(e) if attempt < 3 && retryable(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "etcd read failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Runs a compare-and-write transaction; on a failed compare reads the
    /// key (and the fence) to say why.
    async fn txn(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
        op: TxnOp,
    ) -> Result<Vec<TxnOpResponse>> {
        let full = self.full(key);
        let compare = match pre {
            Precondition::None => None,
            Precondition::MustNotExist => {
                Some(Compare::create_revision(full.clone(), CompareOp::Equal, 0))
            }
            Precondition::MustExist => Some(Compare::create_revision(
                full.clone(),
                CompareOp::Greater,
                0,
            )),
            Precondition::ModRevision(r) => Some(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                i64::try_from(r).unwrap_or(i64::MAX),
            )),
        };
        let mut compares: Vec<Compare> = compare.into_iter().collect();
        let mut otherwise = vec![TxnOp::get(full, Some(GetOptions::new().with_keys_only()))];
        if let Some(f) = fence {
            let fk = self.full(&f.key);
            compares.push(Compare::mod_revision(
                fk.clone(),
                CompareOp::Equal,
                i64::try_from(f.mod_revision).unwrap_or(i64::MAX),
            ));
            otherwise.push(TxnOp::get(fk, Some(GetOptions::new().with_keys_only())));
        }
        let txn = Txn::new().when(compares).and_then([op]).or_else(otherwise);
        let resp = self.client.kv_client().txn(txn).await.map_err(backend)?;
        self.saw(resp.header());
        if resp.succeeded() {
            return Ok(resp.op_responses());
        }
        let mut reads = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| revision(kv.mod_revision())),
            _ => None,
        });
        let existing = reads.next().flatten();
        if let Some(f) = fence
            && reads.next().flatten() != Some(f.mod_revision)
        {
            return Err(StoreError::Fenced {
                key: f.key.clone(),
                expected: f.mod_revision,
            });
        }
        Err(match (pre, existing) {
            (Precondition::MustNotExist, _) => StoreError::AlreadyExists(key.to_owned()),
            (Precondition::ModRevision(expected), Some(actual)) => StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual,
            },
            _ => StoreError::NotFound(key.to_owned()),
        })
    }

    /// Compacts etcd's history up to `rev`: older revisions can no longer be
    /// read or watched from. Compacting to a revision already compacted is
    /// not an error.
    pub async fn compact(&self, rev: Revision) -> Result<()> {
        let r = i64::try_from(rev).unwrap_or(i64::MAX);
        match self.client.kv_client().compact(r, None).await {
            Ok(_) => Ok(()),
            Err(e) => match etcd_error(e, Some(rev), self.revision()) {
                StoreError::Compacted { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// The underlying client (for leases and elections on the same connection).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Follows one etcd watch, re-establishing it from the last revision
/// delivered when the connection breaks, until the consumer goes away or
/// the revision it needs is compacted.
struct Follower {
    client: Client,
    root: String,
    prefix: String,
    seen: Arc<AtomicU64>,
    tx: mpsc::Sender<Result<Arc<Event>>>,
}

impl Follower {
    fn event(&self, ev: &etcd_client::Event) -> Option<Event> {
        let conv = |kv: &etcd_client::KeyValue| -> Option<KeyValue> {
            let key = std::str::from_utf8(kv.key())
                .ok()?
                .strip_prefix(self.root.as_str())?;
            Some(KeyValue {
                key: key.to_owned(),
                value: Bytes::copy_from_slice(kv.value()),
                create_revision: revision(kv.create_revision()),
                mod_revision: revision(kv.mod_revision()),
            })
        };
        let kv = ev.kv()?;
        match ev.event_type() {
            EventType::Put => Some(Event::Put {
                kv: conv(kv)?,
                prev: ev.prev_kv().and_then(conv),
            }),
            EventType::Delete => {
                let revision = revision(kv.mod_revision());
                let prev = match ev.prev_kv().and_then(conv) {
                    Some(p) => p,
                    // etcd had compacted the previous value away: what is
                    // known is the key.
                    None => KeyValue {
                        key: conv(kv)?.key,
                        value: Bytes::new(),
                        create_revision: 0,
                        mod_revision: revision.saturating_sub(1),
                    },
                };
                Some(Event::Delete { prev, revision })
            }
        }
    }

    async fn run(self, after: Revision) {
        let mut last = after;
        let mut failures = 0u32;
        loop {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_progress_notify()
                .with_start_revision(i64::try_from(last + 1).unwrap_or(i64::MAX));
            let key = format!("{}{}", self.root, self.prefix);
            let mut watcher = self
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE);
            let stream = tokio::select! {
                _ = self.tx.closed() => return,
                s = watcher.watch(key, Some(opts)) => s,
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "etcd watch could not start; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10))))
                        .await;
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    _ = self.tx.closed() => return,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, revision = last, "etcd watch broke; resuming");
                        break;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = self
                        .tx
                        .send(Err(StoreError::Compacted {
                            requested: last,
                            oldest: revision(resp.compact_revision()),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        "etcd cancelled a watch; resuming"
                    );
                    break;
                }
                failures = 0;
                if let Some(h) = resp.header() {
                    self.seen
                        .fetch_max(revision(h.revision()), Ordering::Relaxed);
                }
                for ev in resp.events() {
                    let Some(ev) = self.event(ev) else { continue };
                    if ev.revision() <= last {
                        continue;
                    }
                    last = ev.revision();
                    if self.tx.send(Ok(Arc::new(ev))).await.is_err() {
                        return;
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = self.full(key);
        let resp = self
            .read(|mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await
            .map_err(backend)?;
        self.saw(resp.header());
        resp.kvs().first().map(|kv| self.kv(kv)).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<Page> {
        let mut opts = GetOptions::new();
        if let Some(l) = limit {
            opts = opts.with_limit(i64::try_from(l).unwrap_or(i64::MAX));
        }
        let resp = self.range(prefix, start_after, opts, at).await?;
        let current = self.saw(resp.header());
        let items = resp
            .kvs()
            .iter()
            .map(|kv| self.kv(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page {
            items,
            revision: at.unwrap_or(current),
            more: resp.more(),
        })
    }

    async fn count(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        at: Option<Revision>,
    ) -> Result<usize> {
        let resp = self
            .range(prefix, start_after, GetOptions::new().with_count_only(), at)
            .await?;
        self.saw(resp.header());
        Ok(usize::try_from(resp.count()).unwrap_or_default())
    }

    async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<KeyValue> {
        let op = TxnOp::put(
            self.full(key),
            value.to_vec(),
            Some(PutOptions::new().with_prev_key()),
        );
        let resp = self.txn(key, pre, fence, op).await?;
        let Some(TxnOpResponse::Put(put)) = resp.into_iter().next() else {
            return Err(StoreError::Backend(
                "etcd answered a put with no put".into(),
            ));
        };
        let rev = revision(put.header().map_or(0, |h| h.revision()));
        let create = put
            .prev_key()
            .map_or(rev, |p| revision(p.create_revision()));
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: create,
            mod_revision: rev,
        })
    }

    async fn delete_fenced(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<(KeyValue, Revision)> {
        let op = TxnOp::delete(self.full(key), Some(DeleteOptions::new().with_prev_key()));
        let resp = self.txn(key, pre, fence, op).await?;
        let Some(TxnOpResponse::Delete(del)) = resp.into_iter().next() else {
            return Err(StoreError::Backend(
                "etcd answered a delete with no delete".into(),
            ));
        };
        let rev = revision(del.header().map_or(0, |h| h.revision()));
        match del.prev_kvs().first() {
            Some(prev) => Ok((self.kv(prev)?, rev)),
            None => Err(StoreError::NotFound(key.to_owned())),
        }
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let (tx, rx) = mpsc::channel(1024);
        let follower = Follower {
            client: self.client.clone(),
            root: self.root.clone(),
            prefix: if prefix.is_empty() {
                "/".to_owned()
            } else {
                prefix.to_owned()
            },
            seen: self.seen.clone(),
            tx,
        };
        tokio::spawn(follower.run(after));
        Ok(Watch::from_channel(rx))
    }

    fn revision(&self) -> Revision {
        self.seen.load(Ordering::Relaxed)
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.current().await
    }

    async fn check(&self) -> Result<()> {
        self.current().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn range_end_of_a_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
