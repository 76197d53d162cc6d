//! The real agent against the real server and controllers, on a fake
//! hypervisor and a fake host network (no root, QEMU or netlink): the
//! heartbeat goes on while a reconcile pass is stuck for three times the
//! lease, a cluster's deletion finishes only once its VMs and devices are
//! gone (its overlay returned last), and a host that is gone for good holds
//! deletions until it is deleted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kube::api::Api;
use paddock_agent::hypervisor::fake::FakeHypervisor;
use paddock_api::{Cluster, ClusterPhase, Host, HostPhase};
use paddock_net::fake::FakeNet;

const HEARTBEAT: Duration = Duration::from_secs(1);
/// What the agent asks for: four heartbeats.
const LEASE: Duration = Duration::from_secs(4);

struct Agent {
    hv: Arc<FakeHypervisor>,
    net: Arc<FakeNet>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _state: tempfile::TempDir,
}

async fn agent(s: &TestServer, name: &str) -> Agent {
    let state = tempfile::tempdir().expect("tempdir");
    let client = client_for(&s.host_kubeconfig(name)).await;
    let (hv, net) = (
        Arc::new(FakeHypervisor::new()),
        Arc::new(FakeNet::default()),
    );
    let cfg = paddock_agent::AgentConfig {
        name: name.into(),
        underlay: "192.0.2.1".parse().expect("ip"),
        state_dir: state.path().to_path_buf(),
        qemu: "/nonexistent/qemu".into(),
        accel: paddock_agent::AccelChoice::Tcg,
        probe_kernel: None,
        default_image: "dev".into(),
        reserve: Default::default(),
        stop_grace: Duration::from_secs(1),
        resync: Duration::from_secs(2),
        heartbeat: HEARTBEAT,
    };
    let parts = paddock_agent::Parts {
        hypervisor: hv.clone(),
        net: net.clone(),
        platform: Arc::new(paddock_agent::platform::KubePlatform(client.clone())),
        overlay_mtu: 1450,
    };
    let task = tokio::spawn(paddock_agent::run_with(client, cfg, parts));
    Agent {
        hv,
        net,
        task,
        _state: state,
    }
}

async fn host_phase(s: &TestServer, name: &str) -> Option<HostPhase> {
    Api::<Host>::all(s.client.clone())
        .get_opt(name)
        .await
        .ok()??
        .status?
        .phase
}

async fn cluster(s: &TestServer, name: &str) -> Option<Cluster> {
    Api::<Cluster>::namespaced(s.client.clone(), "acme")
        .get_opt(name)
        .await
        .expect("get cluster")
}

async fn setup() -> (TestServer, tempfile::TempDir) {
    let s = TestServer::start()
        .await
        .with_controllers(paddock_controllers::Config {
            host_grace: Duration::from_secs(2),
            ..Default::default()
        });
    let files = tempfile::tempdir().expect("tempdir");
    let kernel = files.path().join("vmlinuz");
    std::fs::write(&kernel, b"not booted: the hypervisor is a fake").expect("kernel");
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.apply(&format!(
        "apiVersion: paddock.io/v1alpha1\nkind: MachineImage\nmetadata: {{name: dev}}\nspec: {{kernel: {{url: \"file://{}\"}}, kubernetesVersion: \"1.31.2\", standIn: true}}\n",
        kernel.display()
    ));
    (s, files)
}

fn create_cluster(s: &TestServer, name: &str) {
    paddock_ok(
        &s.kubeconfig(),
        &[
            "cluster",
            "create",
            name,
            "-n",
            "acme",
            "--workers",
            "1",
            "--cpu",
            "1",
            "--memory",
            "512Mi",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_goes_on_while_a_pass_is_stuck() {
    let (s, _files) = setup().await;
    let a = agent(&s, "h1").await;
    eventually(20, "h1 Ready", || async {
        (host_phase(&s, "h1").await == Some(HostPhase::Ready)).then_some(())
    })
    .await;
    // Every VM start now takes three leases: the pass that starts them is
    // stuck that long.
    let stuck = LEASE * 3;
    a.hv.set_start_delay(stuck);
    create_cluster(&s, "demo");
    eventually(20, "a start under way", || async {
        (a.hv.counts().0 > 0).then_some(())
    })
    .await;
    let t = Instant::now();
    while t.elapsed() < stuck - Duration::from_secs(1) {
        assert!(a.hv.running_uids().len() < 2, "the pass finished early");
        assert_eq!(
            host_phase(&s, "h1").await,
            Some(HostPhase::Ready),
            "h1 turned NotReady {:?} into a stuck pass",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.hv.set_start_delay(Duration::ZERO);
    eventually(60, "demo Ready", || async {
        let c = cluster(&s, "demo").await?;
        (c.status?.phase == Some(ClusterPhase::Ready)).then_some(())
    })
    .await;
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_finishes_only_when_the_vms_and_devices_are_gone() {
    let (s, _files) = setup().await;
    let a = agent(&s, "h1").await;
    create_cluster(&s, "demo");
    let vni = eventually(60, "demo Ready", || async {
        let st = cluster(&s, "demo").await?.status?;
        (st.phase == Some(ClusterPhase::Ready)).then_some(st.overlay?.vni)
    })
    .await;
    assert_eq!(a.hv.running_uids().len(), 2);
    assert!(a.net.link(&paddock_net::vxlan_name(vni)).is_some());

    // Stopping each VM takes 2 s: until both are stopped and the devices
    // gone, the cluster stays and keeps its overlay.
    a.hv.set_stop_delay(Duration::from_secs(2));
    let kc = s.kubeconfig();
    let delete = tokio::task::spawn_blocking(move || {
        paddock_ok(
            &kc,
            &[
                "cluster",
                "delete",
                "demo",
                "-n",
                "acme",
                "--wait",
                "--timeout",
                "60",
            ],
        )
    });
    while !delete.is_finished() {
        let (vms, links) = (a.hv.running_uids(), a.net.names());
        if !vms.is_empty() || !links.is_empty() {
            assert!(
                overlay_claimed(&s, vni).await,
                "VNI {vni} released while {vms:?} run and {links:?} exist"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delete.await.expect("delete returns");
    // The moment `--wait` returns, nothing of the cluster is left.
    assert!(
        a.hv.running_uids().is_empty(),
        "VMs left: {:?}",
        a.hv.running_uids()
    );
    assert!(a.net.names().is_empty(), "links left: {:?}", a.net.names());
    assert!(a.net.guards().is_empty(), "source guards left");
    assert!(!overlay_claimed(&s, vni).await);

    // A host that is gone for good holds its clusters' deletion, and says
    // so, until the operator deletes it.
    a.hv.set_stop_delay(Duration::ZERO);
    create_cluster(&s, "two");
    eventually(60, "two Ready", || async {
        let c = cluster(&s, "two").await?;
        (c.status?.phase == Some(ClusterPhase::Ready)).then_some(())
    })
    .await;
    a.task.abort();
    eventually(20, "h1 NotReady", || async {
        (host_phase(&s, "h1").await == Some(HostPhase::NotReady)).then_some(())
    })
    .await;
    paddock_ok(&s.kubeconfig(), &["cluster", "delete", "two", "-n", "acme"]);
    let msg = eventually(20, "two waits for h1", || async {
        let st = cluster(&s, "two").await?.status?;
        let msg = st.conditions.first()?.message.clone();
        (st.phase == Some(ClusterPhase::Deleting) && msg.contains("h1")).then_some(msg)
    })
    .await;
    assert!(msg.contains("deleting its Host"), "{msg}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cluster(&s, "two").await.is_some(),
        "held while h1 may run its VMs"
    );
    paddock_ok(&s.kubeconfig(), &["host", "delete", "h1"]);
    eventually(20, "two gone", || async {
        cluster(&s, "two").await.is_none().then_some(())
    })
    .await;
}
