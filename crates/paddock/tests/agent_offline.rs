//! A host's agent without the management API (root, real VMs): the server
//! goes away for five minutes (`PADDOCK_TEST_API_OUTAGE_SECONDS`). The
//! VMs keep running all along; one whose QEMU dies meanwhile is started
//! again by the agent alone; when the server is back, on the same data,
//! the agent reports what really happened — the untouched VM with its
//! first start, the other with its new QEMU and start time — and its host
//! is Ready again.

mod common;

use std::time::{Duration, Instant};

use common::lab::{self, Lab};
use common::*;
use kube::api::{Api, PostParams};
use paddock_api::machine::MachineSpec;
use paddock_api::{Machine, MachineRole, Memory};

fn pid_of(lab: &Lab, uid: &str) -> Option<u32> {
    std::fs::read_to_string(lab.hosts[0].state.join("vms").join(uid).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn running_condition(api: &Api<Machine>, name: &str) -> Option<(String, String)> {
    let m = api.get(name).await.ok()?;
    let st = m.status?;
    let guest = st
        .conditions
        .iter()
        .any(|c| c.type_ == "GuestReady" && c.status == "True");
    let run = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Running" && c.status == "True")?;
    let started = st.started_at?.0.to_string();
    guest.then(|| (run.message.clone(), started))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_run_through_an_api_outage_and_the_agent_reports_what_happened() {
    let outage = Duration::from_secs(
        std::env::var("PADDOCK_TEST_API_OUTAGE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let (mut s, mut lab, socket, image) = lab::start(1, "acme").await;
    lab::cluster_with_overlay(
        &s.client,
        "acme",
        "red",
        1001,
        "10.100.1.0/24",
        "10.100.1.1",
    )
    .await;
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let mut uids = Vec::new();
    for (i, name) in ["red-1", "red-2"].into_iter().enumerate() {
        let spec = MachineSpec {
            cluster_name: "red".into(),
            role: MachineRole::Worker,
            pool: None,
            cpu: 1,
            memory: Memory::from_mib(192),
            disk: Memory::from_gib(1),
            image: None,
            host_name: Some(lab.hosts[0].name.clone()),
            mac: Some(format!("52:54:00:00:01:1{i}")),
            ip: Some(format!("10.100.1.1{i}/24")),
            bootstrap_secret: None,
        };
        let m = machines
            .create(&PostParams::default(), &Machine::new(name, spec))
            .await
            .expect("machine");
        uids.push(m.metadata.uid.expect("uid"));
    }
    lab.start_agent(0, &s, &socket, &image);
    let mut before = Vec::new();
    for name in ["red-1", "red-2"] {
        before.push(
            eventually(240, &format!("{name} running"), || {
                running_condition(&machines, name)
            })
            .await,
        );
    }
    let pids: Vec<u32> = uids
        .iter()
        .map(|u| pid_of(&lab, u).expect("a QEMU pid"))
        .collect();

    // The server goes away.
    let data_dir = s.data_dir();
    s.running.take().expect("running").shutdown();
    let down = Instant::now();
    eprintln!("agent_offline: the API is down for {outage:?}");
    // One VM's QEMU dies a little later: the agent, alone, starts it again.
    tokio::time::sleep(Duration::from_secs(10).min(outage / 4)).await;
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pids[1].to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let restarted = eventually(
        120,
        "the agent to start red-2 again without the API",
        || async { pid_of(&lab, &uids[1]).filter(|p| *p != pids[1] && alive(*p)) },
    )
    .await;
    while down.elapsed() < outage {
        assert!(alive(pids[0]), "red-1's QEMU kept running without the API");
        assert!(alive(restarted), "red-2's new QEMU kept running");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(
        lab.hosts[0]
            .agent
            .as_mut()
            .is_some_and(|a| a.try_wait().ok().flatten().is_none()),
        "the agent is still running"
    );

    // The server is back on the same data and socket: the agent catches up.
    let mut cfg = paddock_apiserver::ServerConfig::new(
        data_dir.clone(),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.unix_socket = Some(socket.clone());
    let running = paddock_apiserver::start(cfg)
        .await
        .expect("the server starts again");
    s.client = client_for(&running.data.admin_kubeconfig()).await;
    s.running = Some(running);
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let back = Instant::now();
    let (msg2, started2) = eventually(120, "red-2's new QEMU reported", || async {
        running_condition(&machines, "red-2")
            .await
            .filter(|(m, _)| m.contains(&format!("pid {restarted}")))
    })
    .await;
    let reported = back.elapsed();
    let (msg1, started1) = running_condition(&machines, "red-1")
        .await
        .expect("red-1 running");
    assert_eq!(
        (msg1.clone(), started1.clone()),
        before[0],
        "red-1 was never restarted, and says so"
    );
    assert!(
        started2 > before[1].1,
        "red-2 reports its new start ({started2} after {})",
        before[1].1
    );
    let hosts: Api<paddock_api::Host> = Api::all(s.client.clone());
    eventually(60, "the host Ready again", || async {
        let h = hosts.get(&lab.hosts[0].name).await.ok()?;
        (h.status?.phase == Some(paddock_api::HostPhase::Ready)).then_some(())
    })
    .await;
    eprintln!(
        "agent_offline: after {outage:?} without the API both VMs ran; red-2 restarted by the agent alone ({msg2}); reported {reported:.1?} after the API came back"
    );
}
