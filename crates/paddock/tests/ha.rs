//! A management plane of several servers on one etcd cluster (three real
//! members on loopback, TLS both ways): every server serves the API; the
//! controllers run on the elected leader only; a leader that is deposed
//! while it still believes it leads has its writes refused by the store
//! (the fence of its term); handover after the leader stops is measured;
//! writes go on when an etcd member dies.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use paddock_api::Machine;
use paddock_apiserver::leader::{ElectionConfig, LEASE_NAME, LEASE_NAMESPACE};

/// Short timings, so that the test waits seconds rather than minutes.
fn election(identity: &str) -> ElectionConfig {
    ElectionConfig {
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

struct Replica {
    running: Option<paddock_apiserver::Running>,
    client: kube::Client,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

impl Replica {
    fn running(&self) -> &paddock_apiserver::Running {
        self.running.as_ref().expect("running")
    }
    fn leads(&self) -> bool {
        self.running().leadership.current().is_some()
    }
}

async fn replica(dir: &Path, etcd: &paddock_etcd::LocalCluster, identity: &str) -> Replica {
    let mut cfg = paddock_apiserver::ServerConfig::new(
        dir.join(identity),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.store = paddock_apiserver::StoreConfig::Etcd(etcd_options(etcd));
    cfg.election = Some(election(identity));
    cfg.gc_resync = Duration::from_secs(2);
    let running = paddock_apiserver::start(cfg).await.expect("server starts");
    let client = client_for(&running.data.admin_kubeconfig()).await;
    let controllers = running.controllers.clone();
    running.spawn_leader_loops(move |_| {
        paddock_controllers::loops(controllers.clone(), paddock_controllers::Config::default())
    });
    Replica {
        running: Some(running),
        client,
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    leases
        .get_opt(LEASE_NAME)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_one_leader_runs_the_controllers_and_a_deposed_leader_is_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = paddock_etcd::LocalCluster::start(&dir.path().join("etcd"), 3)
        .await
        .expect("three etcd members");
    let a = replica(dir.path(), &etcd, "a").await;
    paddock_apiserver::bootstrap::share(&dir.path().join("a"), &dir.path().join("b"))
        .expect("share");
    let b = replica(dir.path(), &etcd, "b").await;
    register_stand_in_image(&a.client).await;

    // Exactly one leads, and the Lease says which.
    let first = eventually(20, "a leader", || async {
        match (a.leads(), b.leads()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            _ => None,
        }
    })
    .await;
    assert_eq!(holder(&b.client).await.as_deref(), Some(first));
    let (leader, follower) = if first == "a" { (&a, &b) } else { (&b, &a) };

    // A cluster created through the follower is reconciled by the leader's
    // controllers, and both replicas serve the result.
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(follower.client.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "acme"}})).expect("ns"),
    )
    .await
    .expect("namespace through the follower");
    let clusters: Api<paddock_api::Cluster> = Api::namespaced(follower.client.clone(), "acme");
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
                "metadata": {"name": "demo"},
                "spec": {"controlPlane": {"replicas": 1, "cpu": 1, "memory": "512Mi"},
                         "nodePools": [{"name": "w", "replicas": 2, "cpu": 1, "memory": "512Mi"}]}
            }))
            .expect("cluster"),
        )
        .await
        .expect("cluster through the follower");
    for r in [leader, follower] {
        let machines: Api<Machine> = Api::namespaced(r.client.clone(), "acme");
        eventually(
            30,
            "the leader's controllers make demo's Machines",
            || async {
                let n = machines
                    .list(&ListParams::default().labels("paddock.io/cluster=demo"))
                    .await
                    .ok()?
                    .items
                    .len();
                (n == 3).then_some(())
            },
        )
        .await;
    }

    // The follower's controllers may not write at all.
    let refused = Api::<Secret>::namespaced(follower.running().controllers.clone(), "acme")
        .create(&PostParams::default(), &secret("from-follower"))
        .await
        .expect_err("a follower's controllers are refused");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 503),
        "{refused:?}"
    );

    // The leader stops renewing (its election stops) but still believes it
    // leads: the other takes over after a lease, and the old leader's
    // writes are refused by the store, not by its own good sense.
    let stopped = Instant::now();
    leader.running().tasks.abort("leader-election");
    assert!(leader.leads(), "the frozen leader still believes it leads");
    eventually(20, "the other replica to take over", || async {
        follower.leads().then_some(())
    })
    .await;
    let handover = stopped.elapsed();
    eprintln!("ha: the follower led {handover:.1?} after the leader stopped renewing (lease 3 s)");
    assert_eq!(
        holder(&follower.client).await.as_deref(),
        Some(if first == "a" { "b" } else { "a" })
    );
    let stale = Api::<Secret>::namespaced(leader.running().controllers.clone(), "acme")
        .create(&PostParams::default(), &secret("from-deposed"))
        .await
        .expect_err("a deposed leader's write is fenced");
    match &stale {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 503, "{s:?}");
            assert!(s.message.contains("fenced"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    let cms: Api<Secret> = Api::namespaced(follower.client.clone(), "acme");
    assert!(
        cms.get_opt("from-deposed").await.expect("get").is_none(),
        "nothing of the fenced write was stored"
    );
    // The new leader's controllers write.
    Api::<Secret>::namespaced(follower.running().controllers.clone(), "acme")
        .create(&PostParams::default(), &secret("from-new-leader"))
        .await
        .expect("the new leader writes");

    // One etcd member dies: the other two are a quorum, and both replicas
    // still take writes and serve consistent reads.
    etcd.kill(0).expect("kill member 0");
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let cms: Api<Secret> = Api::namespaced(r.client.clone(), "acme");
        let name = format!("after-member-loss-{i}");
        eventually(20, "a write with one member down", || async {
            cms.create(&PostParams::default(), &secret(&name))
                .await
                .ok()
        })
        .await;
    }
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for want in [
        "from-new-leader",
        "after-member-loss-0",
        "after-member-loss-1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

fn secret(name: &str) -> Secret {
    let mut cm = Secret::default();
    cm.metadata.name = Some(name.into());
    cm
}
