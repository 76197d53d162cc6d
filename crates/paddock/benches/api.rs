//! API benchmark: creates, gets and lists with concurrent kube-rs clients
//! over TLS against a real in-process server with the embedded store
//! (every write fsynced), beside the store's own commit rate; then watch
//! delivery to many watchers at a set event rate. Prints figures; asserts
//! nothing.
//!
//! `cargo bench -p paddock --bench api` (PADDOCK_BENCH_CLIENTS,
//! PADDOCK_BENCH_OBJECTS, PADDOCK_BENCH_WATCHERS, PADDOCK_BENCH_WATCH_RATE,
//! PADDOCK_BENCH_WATCH_EVENTS to tune).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams};
use paddock_api::{Cluster, ClusterSpec};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Lat(Vec<Duration>);

impl Lat {
    /// Prints the figures; returns ops/s.
    fn report(mut self, what: &str, wall: Duration) -> f64 {
        self.0.sort();
        let n = self.0.len();
        let pct = |p: f64| self.0[((n as f64 * p) as usize).min(n - 1)];
        let rate = n as f64 / wall.as_secs_f64();
        println!(
            "{what:<28} {n:>6} ops  {rate:>9.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms",
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
        rate
    }
}

fn spec() -> ClusterSpec {
    serde_json::from_value(serde_json::json!({"nodePools": [{"name": "default", "replicas": 2}]}))
        .expect("spec")
}

/// The store alone: `n` fsynced creates of `size`-byte records from
/// `writers` concurrent tasks (the batching the API's writes get). Commits/s.
async fn raw_store_rate(writers: usize, n: usize, size: usize) -> f64 {
    use paddock_store::{Precondition, RedbStore, Store, StoreOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(dir.path(), StoreOptions::default()).expect("store"));
    let value = bytes::Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, value) = (store.clone(), value.clone());
            tokio::spawn(async move {
                for i in 0..n / writers {
                    store
                        .put(
                            &format!("/registry/bench/{w}/{i}"),
                            value.clone(),
                            Precondition::MustNotExist,
                        )
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let rate = (n / writers * writers) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<28} {n:>6} ops  {rate:>9.0} ops/s  ({size}-byte records, {writers} writers)",
        "store alone (fsynced)"
    );
    rate
}

#[tokio::main]
async fn main() {
    let clients = env_or("PADDOCK_BENCH_CLIENTS", 16);
    let objects = env_or("PADDOCK_BENCH_OBJECTS", 4000);
    // The same records as the API stores (a Cluster with its metadata),
    // written to the store alone first.
    let record =
        serde_json::to_vec(&Cluster::new("c00-0000", spec())).map_or(400, |v| v.len() + 250);
    let raw = raw_store_rate(clients, objects, record).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = paddock_apiserver::ServerConfig::new(
        dir.path().join("data"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let server = paddock_apiserver::start(cfg).await.expect("server");
    let kc = server.data.admin_kubeconfig();
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(common::client_for(&kc).await);
    }
    println!(
        "paddock API benchmark: {clients} concurrent clients over TLS, {objects} Clusters, embedded store (fsync per commit)"
    );
    // Clusters default their version from a registered MachineImage.
    common::bench_namespace(&cs[0]).await;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let api: Api<Cluster> = Api::namespaced(c.clone(), "bench");
        let per = objects / clients + usize::from(i < objects % clients);
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(per);
            for n in 0..per {
                let name = format!("c{i}-{n}");
                let t = Instant::now();
                api.create(&PostParams::default(), &Cluster::new(&name, spec()))
                    .await
                    .expect("create");
                lats.push(t.elapsed());
            }
            lats
        }));
    }
    let mut lats = Vec::new();
    for t in tasks {
        lats.extend(t.await.expect("task"));
    }
    let api_rate = Lat(lats).report("create (fsynced)", start.elapsed());
    println!(
        "{:<28} {:>5.0}% of the store's own commit rate",
        "API create rate is",
        100.0 * api_rate / raw
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    let gets = objects * 2;
    for (i, c) in cs.iter().enumerate() {
        let api: Api<Cluster> = Api::namespaced(c.clone(), "bench");
        let per = gets / clients;
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(per);
            for n in 0..per {
                let name = format!("c{i}-{}", n % (objects / clients));
                let t = Instant::now();
                api.get(&name).await.expect("get");
                lats.push(t.elapsed());
            }
            lats
        }));
    }
    let mut lats = Vec::new();
    for t in tasks {
        lats.extend(t.await.expect("task"));
    }
    Lat(lats).report("get", start.elapsed());

    for (what, lp) in [
        ("list all (one response)", ListParams::default()),
        ("list all (pages of 500)", ListParams::default().limit(500)),
        (
            "list by label (0 match)",
            ListParams::default().labels("team=none"),
        ),
    ] {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in cs.iter().take(4) {
            let api: Api<Cluster> = Api::namespaced(c.clone(), "bench");
            let lp = lp.clone();
            tasks.push(tokio::spawn(async move {
                let mut lats = Vec::new();
                for _ in 0..5 {
                    let t = Instant::now();
                    let mut p = lp.clone();
                    let mut total = 0;
                    loop {
                        let page = api.list(&p).await.expect("list");
                        total += page.items.len();
                        match page.metadata.continue_ {
                            Some(c) if !c.is_empty() => p = p.continue_token(&c),
                            _ => break,
                        }
                    }
                    assert!(total == objects || total == 0);
                    lats.push(t.elapsed());
                }
                lats
            }));
        }
        let mut lats = Vec::new();
        for t in tasks {
            lats.extend(t.await.expect("task"));
        }
        Lat(lats).report(what, start.elapsed());
    }
    // The same full list as bytes, not decoded: the server's answer from
    // its cache and the TLS transfer, without kube-rs building 4,000 typed
    // objects on the same two cores.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in cs.iter().take(4) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let req = http::Request::get(format!(
                    "/apis/{}/{}/namespaces/bench/clusters",
                    paddock_api::GROUP,
                    paddock_api::VERSION
                ))
                .body(Vec::new())
                .expect("request");
                let body = c.request_text(req).await.expect("raw list");
                assert!(body.len() > objects * 100, "{} bytes", body.len());
                lats.push(t.elapsed());
            }
            lats
        }));
    }
    let mut lats = Vec::new();
    for t in tasks {
        lats.extend(t.await.expect("task"));
    }
    Lat(lats).report("list all, raw (not decoded)", start.elapsed());
    let watchers = env_or("PADDOCK_BENCH_WATCHERS", 100);
    let rate = env_or("PADDOCK_BENCH_WATCH_RATE", 10_000);
    let events = env_or("PADDOCK_BENCH_WATCH_EVENTS", 30_000);
    watch_delivery(&server, &cs, watchers, rate, events).await;
    server.shutdown();
}

/// Where a watch line names object `w-<n>`: n.
fn seq_of(line: &[u8]) -> Option<usize> {
    const AT: &[u8] = br#""name":"w-"#;
    let i = memchr::memmem::find(line, AT)? + AT.len();
    let digits = line[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[i..i + digits]).ok()?.parse().ok()
}

/// Watch delivery alone: `events` Clusters written straight to the
/// server's store at `rate` per second (so the API's create path is not
/// what is measured), each delivered to `watchers` watches over TLS that
/// read the lines without decoding them (a decoding client would measure
/// its own JSON parsing). Prints delivered events/s against the offered
/// rate, lag from write to delivery, and watches closed as too slow.
async fn watch_delivery(
    server: &paddock_apiserver::Running,
    cs: &[kube::Client],
    watchers: usize,
    rate: usize,
    events: usize,
) {
    use futures::AsyncBufReadExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let res =
        paddock_apiserver::resources::find("paddock.io", "v1alpha1", "clusters").expect("clusters");
    let ns = "bench-watch";
    let mut n = Namespace::default();
    n.metadata.name = Some(ns.into());
    Api::<Namespace>::all(cs[0].clone())
        .create(&PostParams::default(), &n)
        .await
        .expect("ns");
    let rv = server.api.store.revision();
    let t0 = Instant::now();
    // Per object, when it was written (ns since t0; 0 = not yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let client = cs[w % cs.len()].clone();
        let sent = sent.clone();
        let url = format!(
            "/apis/paddock.io/v1alpha1/namespaces/{ns}/clusters?watch=1&resourceVersion={rv}&timeoutSeconds=290"
        );
        let req = http::Request::get(url).body(Vec::new()).expect("request");
        let mut body = Box::pin(client.request_stream(req).await.expect("watch"));
        tasks.push(tokio::spawn(async move {
            // Every line is counted; the lag of every 8th is measured
            // (parsing each would measure this client more than the server).
            let mut lags = Vec::with_capacity(events / 8 + 1);
            let mut line = Vec::with_capacity(2048);
            let mut closed = None;
            let mut got = 0;
            while got < events {
                line.clear();
                match body.read_until(b'\n', &mut line).await {
                    Ok(0) => {
                        closed = Some(format!("the watch ended after {got} events"));
                        break;
                    }
                    Err(e) => {
                        closed = Some(format!("the watch failed after {got} events: {e}"));
                        break;
                    }
                    Ok(_) => {}
                }
                if memchr::memmem::find(&line, br#""type":"ERROR""#).is_some() {
                    closed = Some(String::from_utf8_lossy(&line).trim().to_owned());
                    break;
                }
                got += 1;
                if got % 8 == 0
                    && let Some(i) = seq_of(&line)
                {
                    let at = t0.elapsed().as_nanos() as u64;
                    lags.push(Duration::from_nanos(
                        at.saturating_sub(sent[i].load(Ordering::Relaxed)),
                    ));
                }
            }
            (got, lags, closed)
        }));
    }
    // The writer: a batch every 10 ms, each put concurrent (the store
    // commits them together).
    let template = serde_json::to_value(Cluster::new("x", spec())).expect("cluster");
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let start = Instant::now();
    let mut next = 0;
    while next < events {
        tick.tick().await;
        let batch: Vec<_> = (next..(next + per_tick).min(events))
            .map(|i| {
                let mut obj = template.clone();
                obj["metadata"] = serde_json::json!({
                    "name": format!("w-{i}"), "namespace": ns,
                    "uid": format!("00000000-0000-4000-8000-{i:012}"),
                    "creationTimestamp": "2026-12-01T00:00:00Z", "generation": 1});
                let value = bytes::Bytes::from(serde_json::to_vec(&obj).expect("json"));
                sent[i].store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                let key = res.key(Some(ns), &format!("w-{i}"));
                let store = server.api.store.clone();
                async move {
                    store
                        .put(&key, value, paddock_store::Precondition::MustNotExist)
                        .await
                        .expect("put")
                }
            })
            .collect();
        next += batch.len();
        futures::future::join_all(batch).await;
    }
    let written = start.elapsed();
    let mut lags = Vec::new();
    let mut closed = Vec::new();
    let mut got = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok((n, l, c))) => {
                got += n;
                lags.extend(l);
                closed.extend(c);
            }
            _ => closed.push("no answer within 120 s".into()),
        }
    }
    let delivered = start.elapsed();
    let offered = events as f64 / written.as_secs_f64();
    println!(
        "watch: {events} events written at {offered:.0}/s (asked {rate}/s), {watchers} watchers reading raw lines"
    );
    lags.sort();
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{:<28} {got:>7} ops {:>9.0} ops/s  lag p50 {:>6.2} ms  p99 {:>7.2} ms (1 in 8 sampled)",
        format!("watch delivery ({watchers})"),
        got as f64 / delivered.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "{:<28} {:>5.0}% of the offered rate per watcher ({} of {} deliveries; {} watches closed{})",
        "watchers kept up at",
        100.0 * (got as f64 / watchers as f64 / delivered.as_secs_f64()) / offered,
        got,
        events * watchers,
        closed.len(),
        closed.first().map(|c| format!(": {c}")).unwrap_or_default()
    );
}
