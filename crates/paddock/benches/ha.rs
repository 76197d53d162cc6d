//! The management plane on etcd, in one run: etcd's own put rate on a
//! three-member cluster (the limit), the API's create rate through a server
//! on that cluster beside it, and the leader handover time. Prints figures;
//! asserts nothing.
//!
//! `cargo bench -p paddock --bench ha` (PADDOCK_BENCH_CLIENTS,
//! PADDOCK_BENCH_OBJECTS, PADDOCK_BENCH_HANDOVERS to tune). Needs the etcd
//! binary (`scripts/build-node-binaries.sh /var/cache/paddock/node-bin etcd`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use paddock_api::{Cluster, ClusterSpec};
use paddock_apiserver::leader::ElectionConfig;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints count, rate, p50 and p99; returns the rate.
fn report(what: &str, mut lats: Vec<Duration>, wall: Duration) -> f64 {
    lats.sort();
    let n = lats.len().max(1);
    let pct = |p: f64| {
        lats.get(((n as f64 * p) as usize).min(n - 1))
            .copied()
            .unwrap_or_default()
    };
    let rate = lats.len() as f64 / wall.as_secs_f64();
    println!(
        "{what:<40} {:>6} ops {rate:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
        lats.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    rate
}

fn spec() -> ClusterSpec {
    serde_json::from_value(serde_json::json!({"nodePools": [{"name": "default", "replicas": 2}]}))
        .expect("spec")
}

/// The store options for `etcd`, every key under `root`.
fn etcd_options(etcd: &paddock_etcd::LocalCluster, root: &str) -> paddock_store::EtcdOptions {
    let mut o = common::etcd_options(etcd);
    o.root = root.into();
    o
}

/// etcd alone: `n` puts of `size` bytes from `writers` concurrent clients.
async fn etcd_put_rate(
    etcd: &paddock_etcd::LocalCluster,
    writers: usize,
    n: usize,
    size: usize,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = etcd.client().await.expect("etcd client");
        let per = n / writers;
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(per);
            let value = vec![b'x'; size];
            for i in 0..per {
                let t = Instant::now();
                c.put(format!("/bench/raw/{w}/{i}"), value.clone(), None)
                    .await
                    .expect("put");
                lats.push(t.elapsed());
            }
            lats
        }));
    }
    let mut lats = Vec::new();
    for t in tasks {
        lats.extend(t.await.expect("task"));
    }
    report("etcd put (3 members, the limit)", lats, start.elapsed())
}

#[tokio::main]
async fn main() {
    let clients = env_or("PADDOCK_BENCH_CLIENTS", 16);
    let objects = env_or("PADDOCK_BENCH_OBJECTS", 4000);
    let handovers = env_or("PADDOCK_BENCH_HANDOVERS", 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = paddock_etcd::LocalCluster::start(&dir.path().join("etcd"), 3)
        .await
        .expect("three etcd members");
    println!(
        "paddock HA benchmark: etcd of 3 members on loopback (TLS), {clients} clients, {objects} objects"
    );
    let record =
        serde_json::to_vec(&Cluster::new("c00-0000", spec())).map_or(400, |v| v.len() + 250);
    let raw = etcd_put_rate(&etcd, clients, objects, record).await;

    let mut cfg = paddock_apiserver::ServerConfig::new(
        dir.path().join("a"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.store = paddock_apiserver::StoreConfig::Etcd(etcd_options(&etcd, "/paddock"));
    let server = paddock_apiserver::start(cfg).await.expect("server");
    let kc = server.data.admin_kubeconfig();
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(common::client_for(&kc).await);
    }
    common::bench_namespace(&cs[0]).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let api: Api<Cluster> = Api::namespaced(c.clone(), "bench");
        let per = objects / clients;
        tasks.push(tokio::spawn(async move {
            let mut lats = Vec::with_capacity(per);
            for n in 0..per {
                let t = Instant::now();
                api.create(
                    &PostParams::default(),
                    &Cluster::new(&format!("c{i}-{n}"), spec()),
                )
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
    let api = report("API create on etcd (Cluster)", lats, start.elapsed());
    println!(
        "{:<40} {:>5.0}% of etcd's own put rate (aim: 70 %)",
        "API create rate is",
        100.0 * api / raw
    );
    server.shutdown();

    // Handover: two servers; the leader stops (its election and its loops
    // end, as when its process dies); time until the other leads.
    let lease = Duration::from_secs(3);
    let mut times = Vec::new();
    for round in 0..handovers {
        let mut servers = Vec::new();
        for name in ["x", "y"] {
            let id = format!("{name}{round}");
            let data = dir.path().join(&id);
            if name == "y" {
                let first = dir.path().join(format!("x{round}"));
                paddock_apiserver::bootstrap::share(&first, &data).expect("share");
            }
            let mut cfg =
                paddock_apiserver::ServerConfig::new(data, "127.0.0.1:0".parse().expect("addr"));
            cfg.store = paddock_apiserver::StoreConfig::Etcd(etcd_options(
                &etcd,
                &format!("/handover{round}"),
            ));
            cfg.election = Some(ElectionConfig::with_lease(id, lease));
            servers.push(Arc::new(
                paddock_apiserver::start(cfg).await.expect("server"),
            ));
        }
        let leader = loop {
            if let Some(i) = servers
                .iter()
                .position(|s| s.leadership.current().is_some())
            {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let other = 1 - leader;
        servers[leader].tasks.shutdown();
        let stopped = Instant::now();
        while servers[other].leadership.current().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(stopped.elapsed());
        servers[other].tasks.shutdown();
    }
    times.sort();
    println!(
        "{:<40} {} rounds: p50 {:.2} s, max {:.2} s (lease {:.0} s; the default lease is 6 s)",
        "leader handover after the leader stops",
        times.len(),
        times[times.len() / 2].as_secs_f64(),
        times.last().copied().unwrap_or_default().as_secs_f64(),
        lease.as_secs_f64()
    );
}
