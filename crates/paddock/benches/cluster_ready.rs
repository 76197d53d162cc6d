//! Time from `create` to Ready for a cluster of real VMs (1 control plane, 2
//! workers, on a 3-host lab), beside the floor: the same three VMs booted
//! with plain QEMU in the same run, until their guest agents answer.
//! Needs root, QEMU and the dev image. `cargo bench -p paddock --bench cluster_ready`

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab;
use kube::api::{Api, DeleteParams, PostParams};
use paddock_api::{Cluster, ClusterPhase};
use serde_json::json;

const ROUNDS: usize = 3;

async fn plain_qemu_floor(dir: &Path, image: &Path) -> Duration {
    let t = Instant::now();
    let mut socks = Vec::new();
    for n in 0..3 {
        let d = dir.join(format!("floor{n}"));
        std::fs::create_dir_all(&d).expect("dir");
        let qga = d.join("qga.sock");
        let args = format!(
            "-name floor{n} -accel tcg -cpu max -smp 1 -m 256 -nodefaults -no-user-config -display none \
             -serial file:{d}/console.log -chardev socket,id=qga0,path={q},server=on,wait=off -device virtio-serial-pci \
             -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 -pidfile {d}/qemu.pid -daemonize \
             -kernel {k} -initrd {i} -append console=ttyS0",
            d = d.display(),
            q = qga.display(),
            k = image.join("vmlinuz").display(),
            i = image.join("initrd.img").display()
        );
        assert!(
            Command::new("qemu-system-x86_64")
                .args(args.split_whitespace())
                .status()
                .expect("qemu")
                .success()
        );
        socks.push((d, qga));
    }
    for (_, qga) in &socks {
        while paddock_agent::jsonsock::qga(qga, Duration::from_millis(500))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = t.elapsed();
    for (d, _) in socks {
        let pid = std::fs::read_to_string(d.join("qemu.pid")).expect("pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (s, mut lab, socket, image) = lab::start(3, "bench").await;
    let s = s.with_controllers(paddock_controllers::Config::default());
    lab.agent_args = vec!["--heartbeat-seconds".into(), "2".into()];
    for h in 0..3 {
        lab.start_agent(h, &s, &socket, &image);
    }
    let hosts: Api<paddock_api::Host> = Api::all(s.client.clone());
    common::eventually(60, "hosts", || async {
        (hosts.list(&Default::default()).await.ok()?.items.len() == 3).then_some(())
    })
    .await;
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "bench");
    let mut ready = Vec::new();
    let mut floor = Vec::new();
    for r in 0..ROUNDS {
        floor.push(plain_qemu_floor(&s.dir.path().join(format!("r{r}")), &image).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let spec = serde_json::from_value(json!({"controlPlane": {"memory": "256Mi"}, "nodePools": [{"name": "w", "replicas": 2, "cpu": 1, "memory": "256Mi"}]})).expect("spec");
        let t = Instant::now();
        clusters
            .create(
                &PostParams::default(),
                &Cluster::new(&format!("c{r}"), spec),
            )
            .await
            .expect("cluster");
        common::eventually(300, "Ready", || async {
            (clusters.get(&format!("c{r}")).await.ok()?.status?.phase == Some(ClusterPhase::Ready))
                .then_some(())
        })
        .await;
        ready.push(t.elapsed());
        clusters
            .delete(&format!("c{r}"), &DeleteParams::default())
            .await
            .expect("delete");
        common::eventually(120, "gone", || async {
            clusters
                .get_opt(&format!("c{r}"))
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        common::eventually(60, "VMs gone", || async {
            lab.qemu_pids().is_empty().then_some(())
        })
        .await;
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    ready.sort();
    floor.sort();
    println!(
        "cluster create -> Ready (1 control plane + 2 workers, 3 hosts, TCG), {ROUNDS} rounds"
    );
    println!(
        "  through Paddock           : p50 {:>7.0} ms  max {:>7.0} ms",
        ms(&ready[ROUNDS / 2]),
        ms(&ready[ROUNDS - 1])
    );
    println!(
        "  plain QEMU, same 3 VMs    : p50 {:>7.0} ms  max {:>7.0} ms  (until their guest agents answer)",
        ms(&floor[ROUNDS / 2]),
        ms(&floor[ROUNDS - 1])
    );
    println!(
        "  ratio (p50)               : {:.2}x",
        ms(&ready[ROUNDS / 2]) / ms(&floor[ROUNDS / 2])
    );
}
