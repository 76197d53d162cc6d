//! Bare-metal hosts end to end (root): `paddock dev up --bare-metal 2`
//! makes two powered-off lab machines (QEMU VMs with blank disks on the
//! fabric) behind the lab's virtual Redfish BMC and registers them by BMC
//! and boot MAC. With no hand on them they are powered on through the
//! BMC, netboot through the server's DHCP and iPXE endpoint into the host
//! image, join with their single-use token and turn Ready; a workload
//! cluster runs on them. A wrong BMC password gives an Error state, not a
//! loop. A host whose agent stops (its VM frozen) is powered off through
//! its BMC, and that confirmed, before its Machines come back on the other
//! host; reprovisioned, it netboots again and rejoins. A deleted host is
//! powered off and its Secrets go before it does. `dev down` leaves
//! nothing. Prints the figures: registration to Ready, and the netboot's
//! share.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Down, dev};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use paddock_api::host::{FENCED_CONDITION, ProvisioningState};
use paddock_api::{Host, HostPhase, Machine};

fn image_dir() -> PathBuf {
    std::env::var_os("PADDOCK_DEV_IMAGE").map_or_else(
        || PathBuf::from("/var/cache/paddock/dev-image"),
        PathBuf::from,
    )
}

/// The pid of lab machine `name`'s VM, while it runs.
fn vm_pid(d: &Path, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(d.join(format!("bare-metal/{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .to_owned();
    (state != "Z").then_some(pid)
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;

fn seconds(a: &Time, b: &Time) -> i64 {
    b.0.as_second() - a.0.as_second()
}

async fn ready_hosts(hosts: &Api<Host>) -> Vec<Host> {
    hosts
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|h| h.status.as_ref().and_then(|s| s.phase) == Some(HostPhase::Ready))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_machines_netboot_join_run_a_cluster_and_are_fenced_before_replacement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lab");
    let _down = Down(d.clone());
    let ds = d.to_str().expect("path").to_owned();
    let img = image_dir();
    let t0 = Instant::now();
    let out = dev(&[
        "up",
        "--hosts",
        "0",
        "--bare-metal",
        "2",
        "--data-dir",
        &ds,
        "--image-dir",
        img.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "dev up --bare-metal: {}",
        stderr(&out)
    );
    let kc = d.join("server/admin.kubeconfig");
    let client = client_for(&kc).await;
    let hosts: Api<Host> = Api::all(client.clone());

    // No hand on them: powered on, netbooted, joined, Ready (when each was
    // first seen Ready).
    let mut first_ready: std::collections::BTreeMap<String, jiff::Timestamp> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while first_ready.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {first_ready:?} Ready after 600 s"
        );
        for h in ready_hosts(&hosts).await {
            first_ready
                .entry(h.name_any())
                .or_insert_with(jiff::Timestamp::now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = t0.elapsed();
    for h in ready_hosts(&hosts).await {
        let name = h.name_any();
        let st = h.status.clone().expect("status");
        let p = st.provisioning.clone().expect("provisioning");
        assert_eq!(p.state, Some(ProvisioningState::Ready), "{name}: {p:?}");
        let addr = p.boot_address.clone().expect("a DHCP lease");
        assert_eq!(
            st.underlay_ip.as_deref(),
            Some(addr.as_str()),
            "{name} runs on its lease"
        );
        let created = h.metadata.creation_timestamp.clone().expect("created");
        let (on, script, joined) = (
            p.powered_on_at.expect("powered on"),
            p.netbooted_at.expect("netbooted"),
            p.joined_at.expect("joined"),
        );
        let ready = Time(first_ready[&name]);
        let total = seconds(&created, &ready).max(1);
        println!(
            "FIGURE {name}: registration→Ready {total} s; registration→power-on {} s, power-on→iPXE script {} s (BMC, firmware, DHCP: {}% of the whole), script→joined {} s (kernel, initramfs, join), joined→Ready {} s",
            seconds(&created, &on),
            seconds(&on, &script),
            100 * seconds(&created, &script) / total,
            seconds(&script, &joined),
            seconds(&joined, &ready),
        );
        assert!(
            seconds(&created, &on) >= 0
                && seconds(&on, &script) >= 0
                && seconds(&script, &joined) >= 0
        );
    }
    println!(
        "FIGURE lab up to two Ready bare-metal hosts: {:.0} s",
        up.as_secs_f64()
    );

    // A wrong BMC password: an Error state with the BMC's reason, not a loop.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-password").expect("file");
    paddock_ok(
        &kc,
        &[
            "host",
            "add",
            "bm-wrong",
            "--bmc",
            &format!("redfish+http://127.0.0.1:{}/redfish/v1/Systems/bm-1", 16623),
            "--mac",
            "52:54:00:b0:00:99",
            "--username",
            "admin",
            "--password-file",
            wrong.to_str().expect("path"),
        ],
    );
    // (Its Host is made before its Secret: for a moment the credentials
    // are missing.)
    let message = eventually(60, "bm-wrong in Error, unauthorized", || async {
        let p = hosts.get("bm-wrong").await.ok()?.status?.provisioning?;
        (p.state == Some(ProvisioningState::Error)
            && p.reason
                .as_deref()
                .is_some_and(|r| r.contains("Unauthorized")))
        .then_some(p.message.unwrap_or_default())
    })
    .await;
    assert!(message.contains("admin"), "{message}");
    paddock_ok(&kc, &["host", "delete", "bm-wrong"]);

    // A workload cluster on them.
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
            "600",
        ],
    );
    let machines: Api<Machine> = Api::namespaced(client.clone(), "acme");
    let before = machines
        .list(&ListParams::default())
        .await
        .expect("machines")
        .items;
    let on: std::collections::BTreeSet<String> = before
        .iter()
        .filter_map(|m| m.spec.host_name.clone())
        .collect();
    println!("cluster demo runs on {on:?}");

    // Its agent stops: the whole machine is frozen (SIGSTOP on its VM).
    let victim = before[0].spec.host_name.clone().expect("bound");
    let pid = vm_pid(&d, &victim).expect("the victim's VM runs");
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let old: std::collections::BTreeSet<String> = before.iter().map(|m| m.name_any()).collect();
    // The replacements appear only once the victim is powered off, and
    // that read back through its BMC.
    let replaced_at = eventually(600, "replacements of the victim's Machines", || async {
        let now = machines.list(&ListParams::default()).await.ok()?.items;
        let fresh: Vec<Machine> = now
            .into_iter()
            .filter(|m| !old.contains(&m.name_any()))
            .collect();
        if fresh.is_empty() {
            return None;
        }
        // At the first sight of a replacement the victim's VM is gone.
        assert_eq!(
            vm_pid(&d, &victim),
            None,
            "a replacement exists while {victim} still runs"
        );
        Some(fresh)
    })
    .await;
    let h = hosts.get(&victim).await.expect("victim");
    let st = h.status.clone().expect("status");
    let fenced = st
        .conditions
        .iter()
        .find(|c| c.type_ == FENCED_CONDITION)
        .expect("Fenced condition");
    assert_eq!(
        (fenced.status.as_str(), fenced.reason.as_str()),
        ("True", "PoweredOff")
    );
    assert_eq!(st.power_state.as_deref(), Some("Off"));
    for m in &replaced_at {
        let created = m.metadata.creation_timestamp.clone().expect("created");
        assert!(
            created.0 >= fenced.last_transition_time.0,
            "{} created {:?} before the fence at {:?}",
            m.name_any(),
            created.0,
            fenced.last_transition_time.0
        );
    }
    eventually(600, "demo Ready again on the other host", || async {
        let ms = machines.list(&ListParams::default()).await.ok()?.items;
        let live: Vec<&Machine> = ms
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 2
            && live
                .iter()
                .all(|m| m.spec.host_name.as_deref().is_some_and(|h| h != victim)))
        .then_some(())?;
        let out = paddock(&kc, &["cluster", "list", "-n", "acme"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("Ready")
            .then_some(())
    })
    .await;
    // Kept off while fenced, whatever spec.online says.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        vm_pid(&d, &victim),
        None,
        "a fenced host was powered on again"
    );

    // Reprovisioned: it netboots afresh and rejoins.
    paddock_ok(&kc, &["host", "reprovision", &victim]);
    eventually(600, "the victim Ready again", || async {
        let h = hosts.get(&victim).await.ok()?;
        let unfenced = !h.fenced();
        let ready = h.status?.phase == Some(HostPhase::Ready);
        (unfenced && ready && vm_pid(&d, &victim).is_some()).then_some(())
    })
    .await;

    // Deleting a host deprovisions it: powered off through its BMC, its
    // Secrets (join token, host credential, BMC credentials) deleted, and
    // only then is the Host gone.
    let other = if victim == "bm-1" { "bm-2" } else { "bm-1" };
    assert!(vm_pid(&d, other).is_some());
    paddock_ok(&kc, &["host", "delete", other]);
    eventually(120, "the deleted host deprovisioned", || async {
        hosts.get_opt(other).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        vm_pid(&d, other),
        None,
        "{other} still runs after its deletion"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "paddock-system");
    let left = secrets
        .list(&ListParams::default().labels(&format!("paddock.io/host={other}")))
        .await
        .expect("secrets")
        .items;
    assert!(left.is_empty(), "{} Secrets of {other} left", left.len());

    let out = dev(&["down", "--data-dir", &ds]);
    assert!(out.status.success(), "dev down: {}", stderr(&out));
    assert_eq!(vm_pid(&d, "bm-1"), None);
    assert_eq!(vm_pid(&d, "bm-2"), None);
    assert!(!Path::new("/run/netns/paddock-fabric").exists());
}
