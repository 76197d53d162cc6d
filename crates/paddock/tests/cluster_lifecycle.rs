//! End to end with real VMs and the controllers: a cluster is created with
//! the CLI on a 3-host lab and turns Ready with its machines spread; it
//! scales up and down; a host dies and its machines come back Ready on the
//! others; deleting it leaves nothing and its overlay is reused. A cluster
//! that fits nowhere stays Pending with its reason, and runs once a host
//! with room joins.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::lab::{self, Lab};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use paddock_api::{Cluster, ClusterPhase, Machine};

fn controllers() -> paddock_controllers::Config {
    paddock_controllers::Config {
        host_grace: Duration::from_secs(3),
        ..Default::default()
    }
}

fn ok(s: &TestServer, args: &[&str]) -> String {
    paddock_ok(&s.kubeconfig(), args)
}

/// Starts every host's agent and waits until all hosts are Ready.
async fn start_agents(
    lab: &mut Lab,
    s: &TestServer,
    socket: &std::path::Path,
    image: &std::path::Path,
) {
    lab.agent_args = vec!["--heartbeat-seconds".into(), "1".into()];
    for h in 0..lab.hosts.len() {
        lab.start_agent(h, s, socket, image);
    }
    let hosts: Api<paddock_api::Host> = Api::all(s.client.clone());
    let n = lab.hosts.len();
    eventually(60, "hosts Ready", || async {
        let ready = hosts
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|h| {
                h.status.as_ref().and_then(|s| s.phase) == Some(paddock_api::HostPhase::Ready)
            })
            .count();
        (ready == n).then_some(())
    })
    .await;
}

async fn live_machines_of(api: &Api<Machine>, cluster: &str) -> Vec<Machine> {
    let mut ms = machines_of(api, cluster).await;
    ms.retain(|m| m.metadata.deletion_timestamp.is_none());
    ms
}

async fn machines_of(api: &Api<Machine>, cluster: &str) -> Vec<Machine> {
    api.list(&ListParams::default().labels(&format!("paddock.io/cluster={cluster}")))
        .await
        .expect("list")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_scale_survive_a_host_and_delete() {
    let (s, mut lab, socket, image) = lab::start(3, "acme").await;
    let s = s.with_controllers(controllers());
    start_agents(&mut lab, &s, &socket, &image).await;
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");

    let out = ok(
        &s,
        &[
            "cluster",
            "create",
            "demo",
            "-n",
            "acme",
            "--workers",
            "2",
            "--cpu",
            "1",
            "--memory",
            "256Mi",
            "--wait",
            "--timeout",
            "300",
        ],
    );
    assert!(out.contains("cluster demo is Ready"), "{out}");
    let ms = machines_of(&machines, "demo").await;
    assert_eq!(ms.len(), 3);
    let hosts: HashSet<String> = ms.iter().filter_map(|m| m.spec.host_name.clone()).collect();
    assert_eq!(
        hosts.len(),
        3,
        "one control plane and two workers spread over three hosts: {hosts:?}"
    );
    let c = clusters.get("demo").await.expect("cluster");
    let st = c.status.clone().expect("status");
    let overlay = st.overlay.clone().expect("overlay");
    assert_eq!(
        (
            st.control_plane_ready,
            st.nodes_ready,
            st.observed_generation
        ),
        (1, 2, c.metadata.generation)
    );
    // The cluster's VMs reach each other over its overlay.
    let ips: Vec<String> = ms
        .iter()
        .filter_map(|m| m.spec.ip.clone())
        .map(|ip| ip.split('/').next().unwrap_or_default().to_owned())
        .collect();
    let out = ok(
        &s,
        &[
            "machine",
            "exec",
            &ms[0].name_any(),
            "-n",
            "acme",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            &ips[1],
        ],
    );
    assert!(out.contains("1 packets received"), "{out}");
    let events = s.kubectl_ok(&["-n", "acme", "get", "events"]);
    assert!(
        events.contains("OverlayAllocated")
            && events.contains("MachineCreated")
            && events.contains("Ready"),
        "{events}"
    );

    ok(
        &s,
        &[
            "cluster",
            "scale",
            "demo",
            "-n",
            "acme",
            "--workers",
            "3",
            "--wait",
            "--timeout",
            "300",
        ],
    );
    assert_eq!(machines_of(&machines, "demo").await.len(), 4);
    ok(
        &s,
        &[
            "cluster",
            "scale",
            "demo",
            "-n",
            "acme",
            "--workers",
            "1",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    eventually(60, "scale down to 2 machines", || async {
        (machines_of(&machines, "demo").await.len() == 2).then_some(())
    })
    .await;

    // A host dies with its VMs: its machines are replaced on the others.
    let ms = machines_of(&machines, "demo").await;
    let victim_host = ms[0].spec.host_name.clone().expect("bound");
    let victim = lab
        .hosts
        .iter()
        .position(|h| h.name == victim_host)
        .expect("host");
    lab.destroy_host(victim);
    // It may still run its VMs for all Paddock knows (it has no BMC):
    // nothing is replaced until the operator confirms it is off, and the
    // host says so.
    let hosts: Api<paddock_api::Host> = Api::all(s.client.clone());
    let why = eventually(60, "the dead host to await fencing", || async {
        let h = hosts.get(&victim_host).await.ok()?;
        let st = h.status?;
        (st.phase == Some(paddock_api::HostPhase::NotReady)).then_some(())?;
        st.conditions
            .iter()
            .find(|c| c.type_ == paddock_api::host::FENCED_CONDITION && c.reason == "AwaitingFence")
            .map(|c| c.message.clone())
    })
    .await;
    assert!(why.contains("paddock host fence"), "{why}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still: Vec<_> = live_machines_of(&machines, "demo")
        .await
        .into_iter()
        .filter(|m| m.spec.host_name.as_deref() == Some(victim_host.as_str()))
        .collect();
    assert!(
        !still.is_empty(),
        "an unfenced host's Machines were replaced: they could run twice"
    );
    ok(&s, &["host", "fence", &victim_host]);
    eventually(240, "machines back Ready on the other hosts", || async {
        let ms = live_machines_of(&machines, "demo").await;
        let c = clusters.get("demo").await.ok()?;
        let ready = c.status.as_ref().and_then(|s| s.phase) == Some(ClusterPhase::Ready);
        let elsewhere = ms.len() == 2
            && ms.iter().all(|m| {
                m.spec
                    .host_name
                    .as_deref()
                    .is_some_and(|h| h != victim_host)
            });
        (ready && elsewhere).then_some(())
    })
    .await;
    let host = hosts.get(&victim_host).await.expect("host");
    assert_eq!(
        host.status.and_then(|s| s.phase),
        Some(paddock_api::HostPhase::NotReady)
    );

    // Fenced, the dead host's Machines are released (its VMs cannot run):
    // the cluster's deletion does not wait for it. Delete --wait: the
    // moment it returns nothing of the cluster is left on any host, and
    // the overlay has gone back to the pool.
    ok(
        &s,
        &[
            "cluster",
            "delete",
            "demo",
            "-n",
            "acme",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    ok(&s, &["host", "delete", &victim_host]);
    assert!(machines_of(&machines, "demo").await.is_empty());
    assert!(!overlay_claimed(&s, overlay.vni).await);
    assert_eq!(lab.qemu_pids(), Vec::<u32>::new(), "QEMU left");
    for h in (0..3).filter(|h| *h != victim) {
        let links = lab.exec(h, "ip -o link show");
        assert!(
            !links.contains("pdtap") && !links.contains("pdbr") && !links.contains("pdvx"),
            "links left on host {h}: {links}"
        );
        let fdb = lab.exec(h, "bridge fdb show");
        assert!(!fdb.contains("pdvx"), "FDB entries left on host {h}: {fdb}");
        let nft = lab.exec(h, "nft list ruleset");
        assert!(
            !nft.contains("pdtap"),
            "source guards left on host {h}: {nft}"
        );
    }
    ok(
        &s,
        &["cluster", "create", "next", "-n", "acme", "--workers", "0"],
    );
    let next = eventually(30, "next overlay", || async {
        clusters.get("next").await.ok()?.status?.overlay
    })
    .await;
    assert_eq!(
        (next.vni, next.subnet),
        (overlay.vni, overlay.subnet),
        "the VNI and subnet are reused"
    );
    ok(
        &s,
        &[
            "cluster",
            "delete",
            "next",
            "-n",
            "acme",
            "--wait",
            "--timeout",
            "120",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unschedulable_until_a_host_with_room_joins() {
    let (s, mut lab, socket, image) = lab::start(1, "acme").await;
    let s = s.with_controllers(controllers());
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");

    ok(
        &s,
        &[
            "cluster",
            "create",
            "small",
            "-n",
            "acme",
            "--workers",
            "1",
            "--cpu",
            "1",
            "--memory",
            "256Mi",
        ],
    );
    let why = eventually(30, "a reason", || async {
        let m = machines_of(&machines, "small").await.into_iter().next()?;
        let c = m
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Scheduled" && c.status == "False")?;
        Some(c.message)
    })
    .await;
    assert!(why.contains("no Ready, schedulable host"), "{why}");
    eventually(30, "small Pending", || async {
        (clusters.get("small").await.ok()?.status?.phase == Some(ClusterPhase::Pending))
            .then_some(())
    })
    .await;

    // A host joins: the cluster runs.
    start_agents(&mut lab, &s, &socket, &image).await;
    eventually(240, "small Ready", || async {
        (clusters.get("small").await.ok()?.status?.phase == Some(ClusterPhase::Ready)).then_some(())
    })
    .await;

    // Too big for any host: Pending, and the reason names the shortfall.
    ok(
        &s,
        &[
            "cluster",
            "create",
            "huge",
            "-n",
            "acme",
            "--workers",
            "1",
            "--memory",
            "900Gi",
        ],
    );
    let why = eventually(30, "a reason", || async {
        machines_of(&machines, "huge")
            .await
            .into_iter()
            .find_map(|m| {
                let c = m
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Scheduled" && c.status == "False")?;
                Some(c.message)
            })
    })
    .await;
    assert!(
        why.contains("needs 2 cpu and 900Gi memory; largest free is") && why.contains("host-1"),
        "{why}"
    );
    let events = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "events",
        "--field-selector",
        "reason=FailedScheduling",
    ]);
    assert!(events.contains("900Gi"), "{events}");
    ok(
        &s,
        &[
            "cluster",
            "delete",
            "huge",
            "-n",
            "acme",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    ok(
        &s,
        &[
            "cluster",
            "delete",
            "small",
            "-n",
            "acme",
            "--wait",
            "--timeout",
            "120",
        ],
    );
    eventually(60, "VMs to go", || async {
        lab.qemu_pids().is_empty().then_some(())
    })
    .await;
}
