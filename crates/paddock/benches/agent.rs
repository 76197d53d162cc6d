//! Agent overhead per VM: from a Machine bound to the host (created with
//! `spec.hostName`) to its QEMU process running, networking included —
//! beside the same QEMU command started by hand (tap made beforehand) on
//! the same machine. Prints figures and the ratio; asserts nothing.
//! Needs root, QEMU and the dev image. `cargo bench -p paddock --bench agent`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{self, sh};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use paddock_api::machine::MachineSpec;
use paddock_api::{Machine, MachineRole, Memory};

const ROUNDS: usize = 6;

fn pid_running(pidfile: &Path) -> bool {
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (s, mut lab, socket, image) = lab::start(1, "bench").await;
    let client = s.client.clone();
    lab::cluster_with_overlay(&client, "bench", "c", 3001, "10.101.0.0/24", "10.101.0.1").await;
    let (k, i) = (image.join("vmlinuz"), image.join("initrd.img"));
    lab.start_agent(0, &s, &socket, &image);
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    common::eventually(60, "host registered", || async {
        hosts.get_opt("host-1").await.ok().flatten().map(drop)
    })
    .await;
    let machines: Api<Machine> = Api::namespaced(client.clone(), "bench");

    // The floor: the same QEMU command, by hand, on a tap made beforehand.
    let dir = s.dir.path().join("manual");
    std::fs::create_dir_all(&dir).expect("dir");
    let netns = lab.hosts[0].netns.clone();
    sh(&format!(
        "ip -n {netns} tuntap add dev pdbench0 mode tap && ip -n {netns} link set pdbench0 up"
    ));
    let seed = dir.join("seed.img");
    std::fs::write(&seed, vec![0u8; 1 << 20]).expect("seed");
    let manual_start = |n: usize| -> Duration {
        let d = dir.join(format!("vm{n}"));
        std::fs::create_dir_all(&d).expect("dir");
        let args = format!(
            "-name manual{n} -accel tcg -cpu max -smp 1 -m 128 -nodefaults -no-user-config -display none \
             -serial file:{d}/console.log -qmp unix:{d}/qmp.sock,server=on,wait=off \
             -chardev socket,id=qga0,path={d}/qga.sock,server=on,wait=off -device virtio-serial-pci \
             -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
             -netdev tap,id=net0,ifname=pdbench0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:0a:{n:02x} \
             -drive file={seed},format=raw,if=virtio,readonly=on -pidfile {d}/qemu.pid -daemonize \
             -kernel {k} -append console=ttyS0 -initrd {i}",
            d = d.display(),
            seed = seed.display(),
            k = k.display(),
            i = i.display()
        );
        let t = Instant::now();
        let ok = Command::new("ip")
            .args(["netns", "exec", &netns, "qemu-system-x86_64"])
            .args(args.split_whitespace())
            .status()
            .expect("qemu")
            .success();
        assert!(ok, "manual QEMU failed");
        while !pid_running(&d.join("qemu.pid")) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = t.elapsed();
        let pid = std::fs::read_to_string(d.join("qemu.pid")).expect("pid");
        sh(&format!("kill -9 {}", pid.trim()));
        took
    };

    // Rounds interleave the two, each on a quiet machine.
    let mut agent = Vec::new();
    let mut manual = Vec::new();
    for n in 0..ROUNDS {
        manual.push(manual_start(n));
        let spec = MachineSpec {
            cluster_name: "c".into(),
            role: MachineRole::Worker,
            pool: None,
            cpu: 1,
            memory: Memory::from_mib(128),
            disk: Memory::from_gib(1),
            image: None,
            host_name: Some("host-1".into()),
            mac: Some(format!("52:54:00:00:09:{n:02x}")),
            ip: Some(format!("10.101.0.{}/24", 10 + n)),
            bootstrap_secret: None,
        };
        let t = Instant::now();
        let m = machines
            .create(
                &PostParams::default(),
                &Machine::new(&format!("m{n}"), spec),
            )
            .await
            .expect("machine");
        let pidfile = lab.hosts[0]
            .state
            .join("vms")
            .join(m.uid().expect("uid"))
            .join("qemu.pid");
        while !pid_running(&pidfile) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "VM m{n} did not start"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        agent.push(t.elapsed());
        machines
            .delete(&format!("m{n}"), &DeleteParams::default())
            .await
            .expect("delete");
        common::eventually(60, "VM gone", || async {
            lab.qemu_pids().is_empty().then_some(())
        })
        .await;
    }
    let (a50, a_max) = stats(agent);
    let (m50, m_max) = stats(manual);
    println!("agent overhead per VM ({ROUNDS} VMs, TCG, one host, tap/bridge/VXLAN/seed included)");
    println!("  Machine bound -> QEMU running, via agent : p50 {a50:>7.1} ms  max {a_max:>7.1} ms");
    println!("  same QEMU command by hand (tap ready)    : p50 {m50:>7.1} ms  max {m_max:>7.1} ms");
    println!(
        "  ratio agent / by hand (p50)              : {:.2}x  (agent's own share: {:.1} ms)",
        a50 / m50,
        a50 - m50
    );
}
