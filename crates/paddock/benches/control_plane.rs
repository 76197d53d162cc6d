//! The control plane alone at scale: 1,000 hosts kept Ready by *simulated
//! agents* (they register a Host and hold its Lease, and run nothing; they
//! exist only in this benchmark) and 1,000 clusters of 10 Machines each,
//! placed by the real cluster controller and scheduler over the real API
//! server and store. The server (API, store, watch cache and controllers,
//! as `paddock server` runs them) is its own process, so that its memory
//! is measured apart from the benchmark's clients. Prints placements per
//! second, create-to-bound latency and the server's resident memory.
//! `cargo bench -p paddock --bench
//! control_plane` runs three scales in one go, each on a fresh server:
//! 100 hosts × 1,000 Machines, 1,000 × 10,000 and 10,000 × 100,000
//! (PADDOCK_BENCH_SCALES, e.g. `1000:100,1000:1000` as hosts:clusters, to
//! choose others).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use paddock_api::{Cluster, Machine};
use serde_json::json;

/// Per Machine uid: when it was first seen, when it was seen bound, and its cluster.
type Seen = HashMap<String, (Instant, Option<Instant>, String)>;

/// A simulated agent: registers its Host as Ready with room, holds its Lease. Runs no VMs.
async fn simulated_agent(client: kube::Client, n: usize) {
    let underlay = format!("10.200.{}.{}", n / 250, n % 250 + 1);
    common::simulated_host(&client, &format!("sim-host-{n:04}"), &underlay, 64, "256Gi").await;
}

/// A `paddock server` of its own: API, store, watch cache and controllers.
struct Server {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    client: kube::Client,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let data = dir.path().join("data");
        // One overlay per cluster: the default pool (4,096) is smaller than
        // the largest scale; a /24 each from 10.64.0.0 leaves room for 16,384.
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
            .arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--vni-count",
                "16384",
            ])
            .env("PADDOCK_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("paddock server starts");
        let kubeconfig = data.join("admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            assert!(Instant::now() < deadline, "paddock server never answered");
            if kubeconfig.exists() {
                let c = common::client_for(&kubeconfig).await;
                if c.apiserver_version().await.is_ok() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        common::register_stand_in_image(&client).await;
        Self {
            child,
            _dir: dir,
            client,
        }
    }

    /// The server's resident memory now and at its peak, in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The store's revision: every write so far.
    async fn revision(&self) -> u64 {
        let list = Api::<Namespace>::all(self.client.clone())
            .list_metadata(&Default::default())
            .await
            .expect("list");
        list.metadata
            .resource_version
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scales() -> Vec<(usize, usize)> {
    let spec = std::env::var("PADDOCK_BENCH_SCALES")
        .unwrap_or_else(|_| "100:100,1000:1000,10000:10000".into());
    spec.split(',')
        .filter_map(|s| {
            let (h, c) = s.split_once(':')?;
            Some((h.trim().parse().ok()?, c.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let mut summary = Vec::new();
    for (hosts, clusters) in scales() {
        summary.push(run(hosts, clusters).await);
    }
    println!("summary (machines, placements/s, p50 ms, p99 ms, server RSS MiB):");
    let base = summary.first().map_or(0.0, |s| s.1);
    for (machines, rate, p50, p99, rss) in &summary {
        println!(
            "  {machines:>7}  {rate:>7.0}/s ({:>4.0}% of the smallest scale)  p50 {p50:>7.0}  p99 {p99:>7.0}  server RSS {rss:.0} MiB",
            100.0 * rate / base.max(1.0)
        );
    }
}

/// One scale on a fresh server: (machines, placements/s, p50 ms, p99 ms, server RSS MiB).
async fn run(n_hosts: usize, n_clusters: usize) -> (usize, f64, f64, f64, f64) {
    let per_cluster = 10;
    let total = n_clusters * per_cluster;
    let s = Server::start().await;
    let (rss_idle, _) = s.rss_mib();
    let client = s.client.clone();
    println!(
        "control plane at scale: {n_hosts} hosts (simulated agents), {n_clusters} clusters x {per_cluster} machines = {total} machines"
    );

    let t = Instant::now();
    futures::stream::iter(0..n_hosts)
        .for_each_concurrent(32, |n| simulated_agent(client.clone(), n))
        .await;
    println!(
        "  {n_hosts} simulated hosts registered in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut ns = Namespace::default();
    ns.metadata.name = Some("bench".into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("ns");

    // Watch every Machine: when it is first seen, and when it is seen bound.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let machines: Api<Machine> = Api::all(client.clone());
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            // A watch that ends with an error (a watcher too slow, the
            // cache read again) is resumed by the watcher, as controllers do.
            let mut stream = watcher::watcher(machines, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) = ev {
                    let now = Instant::now();
                    let mut s = seen.lock().expect("lock");
                    let cluster = m.spec.cluster_name.clone();
                    let e = s
                        .entry(m.uid().unwrap_or_default())
                        .or_insert((now, None, cluster));
                    if m.spec.host_name.is_some() && e.1.is_none() {
                        e.1 = Some(now);
                    }
                }
            }
        })
    };

    let rev_start = s.revision().await;
    let start = Instant::now();
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), "bench");
    // When each cluster's create was sent.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    futures::stream::iter(0..n_clusters)
        .for_each_concurrent(16, |i| {
            let (clusters, created) = (clusters.clone(), created.clone());
            async move {
                let spec = serde_json::from_value(json!({"nodePools": [{"name": "w", "replicas": per_cluster - 1, "cpu": 1, "memory": "1Gi"}]})).expect("spec");
                let name = format!("c{i:04}");
                created.lock().expect("lock").insert(name.clone(), Instant::now());
                clusters.create(&PostParams::default(), &Cluster::new(&name, spec)).await.expect("cluster");
            }
        })
        .await;
    println!(
        "  {n_clusters} clusters created in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let bound = seen
            .lock()
            .expect("lock")
            .values()
            .filter(|v| v.1.is_some())
            .count();
        if bound >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.abort();
    let writes = s.revision().await - rev_start;
    let s2 = seen.lock().expect("lock");
    let first = s2.values().map(|v| v.0).min().expect("machines");
    let last = s2.values().filter_map(|v| v.1).max().expect("bound");
    let mut lat: Vec<Duration> = s2.values().filter_map(|v| Some(v.1? - v.0)).collect();
    lat.sort();
    let n = lat.len();
    let pct = |p: f64| lat[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e3;
    println!(
        "  machines bound: {n} of {total}, all within {:.1} s of the first cluster create",
        (last - start).as_secs_f64()
    );
    println!(
        "  placements per second (first machine seen -> last bound): {:.0}",
        n as f64 / (last - first).as_secs_f64()
    );
    println!(
        "  create-to-bound latency: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    // A cluster's create to its last Machine bound: what a user waits for
    // (create-to-bound above leaves out the time before a Machine is made).
    let mut whole: HashMap<&str, Instant> = HashMap::new();
    for (_, bound, cluster) in s2.values() {
        if let Some(b) = bound {
            let e = whole.entry(cluster.as_str()).or_insert(*b);
            *e = (*e).max(*b);
        }
    }
    let sent = created.lock().expect("lock");
    let mut per_cluster_lat: Vec<Duration> = whole
        .iter()
        .filter_map(|(c, b)| Some(b.saturating_duration_since(*sent.get(*c)?)))
        .collect();
    per_cluster_lat.sort();
    let cpct = |p: f64| {
        let n = per_cluster_lat.len();
        per_cluster_lat[((n as f64 * p) as usize).min(n.saturating_sub(1))].as_secs_f64() * 1e3
    };
    println!(
        "  cluster create to its last machine bound: p50 {:.0} ms  p99 {:.0} ms",
        cpct(0.5),
        cpct(0.99)
    );
    let rate = n as f64 / (last - first).as_secs_f64();
    println!(
        "  store writes from the first cluster create to the last bind: {writes} ({:.1} per machine)",
        writes as f64 / total as f64
    );
    let (rss, peak) = s.rss_mib();
    println!(
        "  server RSS: {rss:.0} MiB (peak {peak:.0} MiB; {rss_idle:.0} MiB idle before the hosts): {:.1} KiB per machine and host above idle",
        (rss - rss_idle) * 1024.0 / (total + n_hosts) as f64
    );
    let out = (n, rate, pct(0.5), pct(0.99), rss);
    drop(s2);
    drop(s);
    out
}
