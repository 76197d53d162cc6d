//! `paddock dev up --ha` end to end (root): three etcd members, three
//! servers and HAProxy in front come up in the background with one host;
//! a cluster of real VMs (the dev image) is created through HAProxy; the
//! leading server is SIGKILLed and another takes over while the API keeps
//! answering; `dev up --ha` again brings the dead one back; the cluster
//! scales through the new leader; `dev down` leaves no process, namespace
//! or file of the lab behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lab::{Down, dev};
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

fn image_dir() -> PathBuf {
    std::env::var_os("PADDOCK_DEV_IMAGE").map_or_else(
        || PathBuf::from("/var/cache/paddock/dev-image"),
        PathBuf::from,
    )
}

/// The lab's processes that are still running (by their data directory).
fn lab_processes(d: &Path) -> Vec<String> {
    let needle = d.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&needle) && !cmd.contains("dev_lab")).then_some(cmd)
        })
        .collect()
}

async fn leader(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "paddock-system")
        .get_opt("paddock-controllers")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_lab_survives_its_leader_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lab");
    let guard = Down(d.clone());
    let ds = d.to_str().expect("path").to_owned();
    let img = image_dir();
    let up = || {
        dev(&[
            "up",
            "--ha",
            "--hosts",
            "1",
            "--data-dir",
            &ds,
            "--image-dir",
            img.to_str().expect("path"),
        ])
    };
    let out = up();
    assert!(out.status.success(), "dev up --ha: {}", stderr(&out));
    let kc = d.join("admin.kubeconfig");
    assert!(
        std::fs::read_to_string(&kc)
            .expect("kubeconfig")
            .contains("https://127.0.0.1:6443"),
        "the admin kubeconfig names HAProxy's address"
    );
    let client = client_for(&kc).await;
    let first = eventually(30, "a leader", || leader(&client)).await;
    paddock_ok(&kc, &["org", "create", "acme"]);
    paddock_ok(
        &kc,
        &[
            "cluster",
            "create",
            "demo",
            "-n",
            "acme",
            "--kubernetes-version",
            "1.31.2",
            "--workers",
            "1",
            "--cpu",
            "1",
            "--memory",
            "512Mi",
            "--wait",
            "--timeout",
            "300",
        ],
    );

    // The cluster's API through the gateway (the dev image's stand-in API
    // server answers), run by the leader.
    let cluster_kc = d.join("demo.kubeconfig");
    paddock_ok(
        &kc,
        &[
            "cluster",
            "kubeconfig",
            "demo",
            "-n",
            "acme",
            "--ttl",
            "1h",
            "--group",
            "kubeadm:cluster-admins",
            "--output-file",
            cluster_kc.to_str().expect("path"),
        ],
    );
    let through_gateway = || {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cluster_kc)
            .args(["get", "--raw", "/", "--request-timeout=5s"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    eventually(60, "the cluster's API through the gateway", || async {
        through_gateway().then_some(())
    })
    .await;

    // SIGKILL the leader: HAProxy sends clients to the others, another leads.
    let i: usize = first
        .trim_start_matches("server-")
        .parse()
        .expect("server-N");
    let pid = std::fs::read_to_string(d.join(format!("server-{i}.pid"))).expect("pid");
    let st = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .expect("kill");
    assert!(st.success());
    let second = eventually(30, "another leader", || async {
        leader(&client).await.filter(|h| *h != first)
    })
    .await;
    eprintln!("dev_lab: {first} SIGKILLed, {second} leads");
    // The gateway moved with the leadership.
    let moved = std::time::Instant::now();
    eventually(
        60,
        "the cluster's API through the new leader's gateway",
        || async { through_gateway().then_some(()) },
    )
    .await;
    eprintln!(
        "dev_lab: the gateway answered again {:.1?} after the new leader was seen",
        moved.elapsed()
    );
    // Brought back by running up again (idempotent).
    let out = up();
    assert!(out.status.success(), "dev up --ha again: {}", stderr(&out));
    let back = std::fs::read_to_string(d.join(format!("server-{i}.pid"))).expect("pid");
    assert_ne!(back.trim(), pid.trim(), "server-{i} was started again");
    eventually(
        30,
        "the restarted server to answer through its own port",
        || async {
            let kc = d
                .join(if i == 0 {
                    "server".to_owned()
                } else {
                    format!("server-{i}")
                })
                .join("admin.kubeconfig");
            client_for(&kc).await.apiserver_version().await.ok()
        },
    )
    .await;
    paddock_ok(
        &kc,
        &[
            "cluster",
            "scale",
            "demo",
            "-n",
            "acme",
            "--workers",
            "2",
            "--wait",
            "--timeout",
            "300",
        ],
    );
    let machines = paddock_ok(&kc, &["machine", "list", "-n", "acme"]);
    assert_eq!(machines.matches("Running").count(), 3, "{machines}");

    drop(guard);
    assert!(
        lab_processes(&d).is_empty(),
        "left running: {:?}",
        lab_processes(&d)
    );
    assert!(!d.exists(), "the lab's directory is removed");
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("paddock-"),
        "{}",
        String::from_utf8_lossy(&netns.stdout)
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
