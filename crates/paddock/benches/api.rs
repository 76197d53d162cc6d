//! API benchmark: creates, gets, lists and watch delivery with concurrent
//! kube-rs clients over TLS against a real in-process server with the
//! embedded store (every write fsynced). Prints figures; asserts nothing.
//!
//! `cargo bench -p paddock --bench api` (PADDOCK_BENCH_CLIENTS,
//! PADDOCK_BENCH_OBJECTS, PADDOCK_BENCH_WATCHERS to tune).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use paddock_api::{Cluster, ClusterSpec};
use tokio::sync::Mutex;

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

async fn client(kc: &std::path::Path) -> kube::Client {
    let cfg = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kc).expect("kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    kube::Client::try_from(cfg).expect("client")
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
        cs.push(client(&kc).await);
    }
    println!(
        "paddock API benchmark: {clients} concurrent clients over TLS, {objects} Clusters, embedded store (fsync per commit)"
    );
    // Clusters default their version from a registered MachineImage.
    let mi: paddock_api::MachineImage = serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage", "metadata": {"name": "bench"},
        "spec": {"kernel": {"url": "file:///nonexistent/vmlinuz"},
                 "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION, "standIn": true}
    }))
    .expect("image");
    Api::<paddock_api::MachineImage>::all(cs[0].clone())
        .create(&PostParams::default(), &mi)
        .await
        .expect("MachineImage");
    let mut ns = Namespace::default();
    ns.metadata.name = Some("bench".into());
    Api::<Namespace>::all(cs[0].clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("ns");

    // Watchers first, so they see every create.
    let watchers = env_or("PADDOCK_BENCH_WATCHERS", 100);
    let sent: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let mut watch_tasks = Vec::new();
    for w in 0..watchers {
        let api: Api<Cluster> = Api::namespaced(cs[w % clients].clone(), "bench");
        let rv = api
            .list(&ListParams::default())
            .await
            .expect("list")
            .metadata
            .resource_version
            .expect("rv");
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .expect("watch")
            .boxed();
        let sent = sent.clone();
        watch_tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(objects);
            while lats.len() < objects {
                match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(c))) => {
                        let name = c.metadata.name.unwrap_or_default();
                        if let Some(t) = sent.lock().await.get(&name) {
                            lats.push(t.elapsed());
                        }
                    }
                    Ok(Some(_)) => {}
                    other => panic!("watch ended: {other:?}"),
                }
            }
            lats
        }));
    }

    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let api: Api<Cluster> = Api::namespaced(c.clone(), "bench");
        let sent = sent.clone();
        let per = objects / clients + usize::from(i < objects % clients);
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(per);
            for n in 0..per {
                let name = format!("c{i}-{n}");
                let t = Instant::now();
                sent.lock().await.insert(name.clone(), t);
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
    let mut wl = Vec::new();
    for t in watch_tasks {
        wl.extend(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("watchers done")
                .expect("task"),
        );
    }
    let n = wl.len();
    Lat(wl).report(
        &format!("watch delivery ({watchers} watchers)"),
        start.elapsed(),
    );
    let _ = n;

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
    server.shutdown();
}
