//! The management plane's fault test: three `paddock server` processes on
//! a three-member etcd, clients creating Secrets and creating and scaling
//! Clusters in a stream through whichever server answers, while the
//! leader is SIGKILLed, then an etcd member, then the next leader is
//! SIGSTOPped for longer than its lease and resumed. Afterwards: every
//! acknowledged write is there; no Machine was ever bound to two hosts;
//! no VNI, subnet or Machine address was given out twice; the resumed
//! leader stepped down and its term is over; each handover is measured.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use paddock_api::{Cluster, Machine};
use serde_json::json;

const LEASE_SECONDS: u64 = 3;

struct Server {
    name: String,
    process: ServerProcess,
    log: PathBuf,
}

async fn spawn(
    dir: &Path,
    name: &str,
    etcd: &paddock_etcd::LocalCluster,
) -> (Server, kube::Client) {
    let log = dir.join(format!("{name}.log"));
    let mut args = vec![
        "--leader-identity".to_owned(),
        name.to_owned(),
        "--leader-lease-seconds".into(),
        LEASE_SECONDS.to_string(),
        "--host-grace-seconds".into(),
        "3600".into(),
    ];
    args.extend(etcd_flags(etcd));
    let process = ServerProcess::spawn(&dir.join(name), &args, Some(&log)).await;
    let client = process.client();
    let server = Server {
        name: name.into(),
        process,
        log,
    };
    (server, client)
}

/// The Lease's holder and transitions, read through `client`.
async fn lease(client: &kube::Client) -> Option<(String, i32)> {
    let l = Api::<Lease>::namespaced(client.clone(), "paddock-system")
        .get_opt("paddock-controllers")
        .await
        .ok()??;
    let s = l.spec?;
    Some((s.holder_identity?, s.lease_transitions.unwrap_or(0)))
}

/// The first of `clients` (from `start`) that answers `f`.
async fn any_of<T, F, Fut>(clients: &[kube::Client], start: usize, f: F) -> Option<T>
where
    F: Fn(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    for i in 0..clients.len() {
        let c = clients[(start + i) % clients.len()].clone();
        if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(3), f(c)).await {
            return Some(v);
        }
    }
    None
}

#[derive(Default)]
struct Ledger {
    secrets: Vec<String>,
    clusters: Vec<String>,
    /// The replicas each cluster's pool was last acknowledged at.
    scaled: HashMap<String, i32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_member_faults_lose_nothing_and_double_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = paddock_etcd::LocalCluster::start(&dir.path().join("etcd"), 3)
        .await
        .expect("three etcd members");
    let (s0, c0) = spawn(dir.path(), "s0", &etcd).await;
    paddock_apiserver::bootstrap::share(&s0.process.data, &dir.path().join("s1")).expect("share");
    paddock_apiserver::bootstrap::share(&s0.process.data, &dir.path().join("s2")).expect("share");
    let (s1, c1) = spawn(dir.path(), "s1", &etcd).await;
    let (s2, c2) = spawn(dir.path(), "s2", &etcd).await;
    let mut servers = vec![s0, s1, s2];
    let clients = vec![c0, c1, c2];
    register_stand_in_image(&clients[0]).await;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(clients[0].clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "acme"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    for n in 0..4 {
        simulated_host(
            &clients[0],
            &format!("h{n}"),
            &format!("10.200.0.{}", n + 1),
            256,
            "1024Gi",
        )
        .await;
    }
    let (first, _) = eventually(20, "a leader", || lease(&clients[0])).await;

    // Every binding any server shows, per Machine uid, from two watchers on
    // the servers that will not be killed first.
    let bindings: Arc<Mutex<HashMap<String, HashSet<String>>>> = Arc::default();
    let mut watchers = Vec::new();
    for c in clients
        .iter()
        .zip(&servers)
        .filter(|(_, s)| s.name != first)
        .map(|(c, _)| c)
    {
        let bindings = bindings.clone();
        let api: Api<Machine> = Api::namespaced(c.clone(), "acme");
        watchers.push(tokio::spawn(async move {
            let mut w = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = w.next().await {
                let objs = match ev {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => vec![m],
                    _ => continue,
                };
                for m in objs {
                    if let (Some(uid), Some(h)) = (m.metadata.uid.clone(), m.spec.host_name.clone())
                    {
                        bindings
                            .lock()
                            .expect("lock")
                            .entry(uid)
                            .or_default()
                            .insert(h);
                    }
                }
            }
        }));
    }

    // The clients' stream: Secrets, and Clusters created then scaled.
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (clients, ledger, stop) = (clients.clone(), ledger.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let name = format!("s-{w}-{n}");
                let mut s = Secret::default();
                s.metadata.name = Some(name.clone());
                s.string_data = Some([("k".to_owned(), "v".repeat(100))].into());
                let made = any_of(&clients, w + n, |c| {
                    let s = s.clone();
                    async move {
                        Api::<Secret>::namespaced(c, "acme")
                            .create(&PostParams::default(), &s)
                            .await
                    }
                })
                .await;
                if made.is_some() {
                    ledger.lock().expect("lock").secrets.push(name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (clients, ledger, stop) = (clients.clone(), ledger.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let name = format!("c{n}");
                let cluster: Cluster = serde_json::from_value(json!({
                    "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
                    "metadata": {"name": name},
                    "spec": {"controlPlane": {"replicas": 1, "cpu": 1, "memory": "512Mi"},
                             "nodePools": [{"name": "w", "replicas": 1, "cpu": 1, "memory": "512Mi"}]}
                }))
                .expect("cluster");
                let made = any_of(&clients, n, |c| {
                    let cluster = cluster.clone();
                    async move { Api::<Cluster>::namespaced(c, "acme").create(&PostParams::default(), &cluster).await }
                })
                .await;
                if made.is_some() {
                    ledger.lock().expect("lock").clusters.push(name.clone());
                }
                // Scale an earlier one up.
                let earlier = ledger.lock().expect("lock").clusters.get(n / 2).cloned();
                if let Some(target) = earlier {
                    let replicas = 2 + i32::try_from(n % 3).unwrap_or(0);
                    let patch = json!({"spec": {"nodePools": [{"name": "w", "replicas": replicas, "cpu": 1, "memory": "512Mi"}]}});
                    let scaled = any_of(&clients, n + 1, |c| {
                        let (target, patch) = (target.clone(), patch.clone());
                        async move {
                            Api::<Cluster>::namespaced(c, "acme")
                                .patch(&target, &PatchParams::default(), &Patch::Merge(&patch))
                                .await
                        }
                    })
                    .await;
                    if scaled.is_some() {
                        ledger.lock().expect("lock").scaled.insert(target, replicas);
                    }
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let index = |name: &str| names.iter().position(|n| n == name).expect("a server");
    let others = |not: &[usize]| -> Vec<kube::Client> {
        (0..clients.len())
            .filter(|i| !not.contains(i))
            .map(|i| clients[i].clone())
            .collect()
    };
    // 1. SIGKILL the leader: another takes over.
    let l1 = index(&first);
    let killed = Instant::now();
    servers[l1].process.kill();
    let rest = others(&[l1]);
    let second = eventually(30, "a new leader after the kill", || async {
        let (h, _) = lease(&rest[0]).await?;
        (h != first).then_some(h)
    })
    .await;
    let after_kill = killed.elapsed();

    // 2. SIGKILL an etcd member: the other two are a quorum.
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.kill(1).expect("kill an etcd member");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. SIGSTOP the new leader for longer than its lease; the third takes over.
    let l2 = index(&second);
    assert!(servers[l2].process.signal("STOP"), "SIGSTOP");
    let stopped = Instant::now();
    let third_client = others(&[l1, l2]);
    let third = eventually(30, "a third leader while the second is stopped", || async {
        let (h, _) = lease(&third_client[0]).await?;
        (h != second).then_some(h)
    })
    .await;
    let after_stop = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS * 2)).await;
    assert!(servers[l2].process.signal("CONT"), "SIGCONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    eprintln!(
        "ha_faults: leader {first} SIGKILLed: {second} led after {after_kill:.1?}; \
         {second} SIGSTOPped: {third} led after {after_stop:.1?} (lease {LEASE_SECONDS} s)"
    );

    // The resumed leader noticed and stepped down; the third still leads.
    let resumed_log = eventually(15, "the resumed leader to step down", || async {
        let log = std::fs::read_to_string(&servers[l2].log).ok()?;
        log.contains("no longer leading").then_some(log)
    })
    .await;
    assert!(
        !resumed_log.contains("panicked"),
        "the resumed server did not panic"
    );
    let fenced = resumed_log.matches("fenced").count();
    eprintln!(
        "ha_faults: the resumed {second} logged {fenced} refused (fenced) writes of its loops"
    );
    let survivor = &third_client[0];
    assert_eq!(lease(survivor).await.map(|l| l.0), Some(third.clone()));

    // Let the controllers settle, then check what the stream left.
    let machines: Api<Machine> = Api::namespaced(survivor.clone(), "acme");
    let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
    assert!(
        ledger.secrets.len() > 50,
        "the stream wrote: {}",
        ledger.secrets.len()
    );
    let secrets: HashSet<String> = Api::<Secret>::namespaced(survivor.clone(), "acme")
        .list(&ListParams::default())
        .await
        .expect("list secrets")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let lost: Vec<&String> = ledger
        .secrets
        .iter()
        .filter(|n| !secrets.contains(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged Secrets lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Every acknowledged cluster is there, and the leader's controllers
    // bring each to what its stored spec asks (a scale sent to a server
    // that was then stopped may land after a later one: the stored spec,
    // not the last acknowledgement, is what counts).
    let deadline = Instant::now() + Duration::from_secs(90);
    let clusters: Vec<Cluster> = loop {
        let cs = Api::<Cluster>::namespaced(survivor.clone(), "acme")
            .list(&ListParams::default())
            .await
            .expect("list clusters")
            .items;
        let ms = machines
            .list(&ListParams::default())
            .await
            .expect("list machines")
            .items;
        let mut wrong = Vec::new();
        for name in &ledger.clusters {
            let Some(c) = cs.iter().find(|c| c.metadata.name.as_deref() == Some(name)) else {
                wrong.push(format!("{name}: missing"));
                continue;
            };
            let pools: u32 = c.spec.node_pools.iter().map(|p| p.replicas).sum();
            let want = 1 + pools as usize;
            let have = ms
                .iter()
                .filter(|m| m.spec.cluster_name == *name && m.metadata.deletion_timestamp.is_none())
                .count();
            let overlay = c.status.as_ref().and_then(|s| s.overlay.as_ref()).is_some();
            if want != have || !overlay {
                wrong.push(format!(
                    "{name}: {have} of {want} Machines, overlay {overlay}"
                ));
            }
        }
        if wrong.is_empty() {
            break cs;
        }
        assert!(
            Instant::now() < deadline,
            "clusters not reconciled: {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut vnis = HashSet::new();
    let mut subnets = HashSet::new();
    for c in &clusters {
        let o = c
            .status
            .as_ref()
            .and_then(|s| s.overlay.as_ref())
            .expect("overlay");
        assert!(vnis.insert(o.vni), "VNI {} given twice", o.vni);
        assert!(
            subnets.insert(o.subnet.clone()),
            "subnet {} given twice",
            o.subnet
        );
    }
    let ms = machines
        .list(&ListParams::default())
        .await
        .expect("machines")
        .items;
    let mut ips = HashSet::new();
    for m in &ms {
        if let Some(ip) = &m.spec.ip {
            assert!(ips.insert(ip.clone()), "address {ip} given twice");
        }
    }
    for w in watchers {
        w.abort();
    }
    let bindings = bindings.lock().expect("lock");
    let twice: Vec<_> = bindings.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(twice.is_empty(), "Machines bound to two hosts: {twice:?}");
    assert!(!bindings.is_empty(), "the watchers saw bindings");
    eprintln!(
        "ha_faults: {} Secrets and {} clusters acknowledged, {} Machines, {} bindings seen, none twice",
        ledger.secrets.len(),
        ledger.clusters.len(),
        ms.len(),
        bindings.len()
    );
    drop(servers);
}
