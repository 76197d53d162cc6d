//! End to end with real VMs: three hosts (network namespaces on a shared
//! underlay), an agent on each, two clusters whose Machines are spread over
//! them. Overlays connect a cluster's VMs across hosts and nothing else;
//! agents survive SIGKILL without restarting VMs; a killed QEMU comes back;
//! deleting the Machines leaves nothing behind. Needs root, QEMU and the
//! dev image (built by scripts/build-dev-image.sh).

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::{self, Lab, sh, sha256};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use paddock_api::machine::MachineSpec;
use paddock_api::{Machine, MachineRole, Memory};
use serde_json::json;

struct Vm {
    name: &'static str,
    cluster: &'static str,
    host: usize,
    ip: &'static str,
    mac: &'static str,
}

const VMS: [Vm; 5] = [
    Vm {
        name: "red-1",
        cluster: "red",
        host: 0,
        ip: "10.100.1.11",
        mac: "52:54:00:00:01:11",
    },
    Vm {
        name: "red-2",
        cluster: "red",
        host: 1,
        ip: "10.100.1.12",
        mac: "52:54:00:00:01:12",
    },
    Vm {
        name: "red-3",
        cluster: "red",
        host: 2,
        ip: "10.100.1.13",
        mac: "52:54:00:00:01:13",
    },
    // Same subnet as red on purpose: only the overlay keeps them apart.
    Vm {
        name: "blue-1",
        cluster: "blue",
        host: 0,
        ip: "10.100.1.21",
        mac: "52:54:00:00:02:21",
    },
    Vm {
        name: "blue-2",
        cluster: "blue",
        host: 1,
        ip: "10.100.1.22",
        mac: "52:54:00:00:02:22",
    },
];

fn exec(s: &TestServer, vm: &str, cmd: &str) -> (bool, String) {
    machine_exec(s, "acme", vm, 20, cmd)
}

async fn guest_ready(api: &Api<Machine>, name: &str) -> bool {
    api.get(name)
        .await
        .ok()
        .and_then(|m| m.status)
        .is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "GuestReady" && c.status == "True")
        })
}

fn pid_of(lab: &Lab, host: usize, uid: &str) -> Option<u32> {
    std::fs::read_to_string(lab.hosts[host].state.join("vms").join(uid).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlays_isolation_adoption_and_cleanup() {
    let (s, mut lab, socket, image) = lab::start(3, "acme").await;
    let client = s.client.clone();
    // The cluster controller allocates overlays (a later issue); here the test does.
    for (name, vni) in [("red", 1001), ("blue", 1002)] {
        lab::cluster_with_overlay(&client, "acme", name, vni, "10.100.1.0/24", "10.100.1.1").await;
    }
    let machines: Api<Machine> = Api::namespaced(client.clone(), "acme");
    for vm in &VMS {
        let spec = MachineSpec {
            cluster_name: vm.cluster.into(),
            role: MachineRole::Worker,
            pool: None,
            cpu: 1,
            memory: Memory::from_mib(192),
            disk: Memory::from_gib(1),
            image: None,
            host_name: Some(lab.hosts[vm.host].name.clone()),
            mac: Some(vm.mac.into()),
            ip: Some(format!("{}/24", vm.ip)),
            bootstrap_secret: None,
        };
        machines
            .create(&PostParams::default(), &Machine::new(vm.name, spec))
            .await
            .expect("machine");
    }
    for h in 0..3 {
        lab.start_agent(h, &s, &socket, &image);
    }
    for vm in &VMS {
        eventually(240, &format!("{} GuestReady", vm.name), || async {
            guest_ready(&machines, vm.name).await.then_some(())
        })
        .await;
    }
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    let h1 = hosts.get("host-1").await.expect("host registered");
    let st = h1.status.expect("host status");
    assert_eq!(st.underlay_ip.as_deref(), Some("10.77.0.11"));
    assert_eq!(
        st.accelerator.as_deref(),
        Some("tcg"),
        "KVM guests hang on this machine: the probe must pick TCG"
    );

    // A VM reaches its cluster's VMs on other hosts, by ping and TCP.
    for target in ["10.100.1.12", "10.100.1.13"] {
        let (ok, out) = exec(&s, "red-1", &format!("ping -c 2 -W 3 {target}"));
        assert!(ok, "red-1 -> {target}: {out}");
    }
    let (ok, out) = exec(&s, "red-1", "nc -w 5 10.100.1.13 7000 </dev/null");
    assert!(ok && out.trim() == "red-3", "TCP red-1 -> red-3: {out}");
    let (ok, out) = exec(&s, "blue-2", "ping -c 2 -W 3 10.100.1.21");
    assert!(ok, "blue-2 -> blue-1: {out}");
    // ... and not the other cluster's VMs (on the same host or not), nor hosts.
    for target in [
        "10.100.1.21",
        "10.100.1.22",
        "10.77.0.11",
        "10.77.0.12",
        "10.100.1.1",
    ] {
        let (ok, out) = exec(&s, "red-1", &format!("ping -c 2 -W 2 {target}"));
        assert!(!ok, "red-1 must not reach {target}: {out}");
    }
    // A VM can send only from its own MAC and IP.
    let (ok, out) = exec(
        &s,
        "red-1",
        "ip addr add 10.100.1.99/24 dev eth0 && ping -c 2 -W 2 -I 10.100.1.99 10.100.1.12",
    );
    assert!(!ok, "a spoofed source address must not get through: {out}");
    exec(&s, "red-1", "ip addr del 10.100.1.99/24 dev eth0");
    let (ok, out) = exec(
        &s,
        "red-1",
        "ip link set eth0 down && ip link set eth0 address 52:54:00:00:01:99 && ip link set eth0 up && ping -c 2 -W 2 10.100.1.12",
    );
    assert!(!ok, "a spoofed MAC must not get through: {out}");
    let (ok, out) = exec(
        &s,
        "red-1",
        "ip link set eth0 down && ip link set eth0 address 52:54:00:00:01:11 && ip link set eth0 up && ip route add default via 10.100.1.1 2>/dev/null; ping -c 2 -W 3 10.100.1.12",
    );
    assert!(ok, "with its own MAC again red-1 gets through: {out}");

    // Exec reports the guest command's exit status; unknown machines are a clean 404.
    let (ok, _) = exec(&s, "red-2", "exit 3");
    assert!(!ok);
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(["machine", "console", "red-2", "-n", "acme"])
        .output()
        .expect("console");
    assert!(
        stdout(&out).contains("paddock-dev: ready"),
        "{}",
        stdout(&out)
    );

    // Host networking is what the design says.
    let vx = lab.exec(0, "ip -d link show pdvx1001");
    assert!(
        vx.contains("vxlan id 1001")
            && vx.contains("local 10.77.0.11")
            && vx.contains("nolearning")
            && vx.contains("mtu 1450"),
        "{vx}"
    );
    let fdb = lab.exec(0, "bridge fdb show dev pdvx1001");
    for want in [
        "00:00:00:00:00:00 dst 10.77.0.12",
        "00:00:00:00:00:00 dst 10.77.0.13",
        "52:54:00:00:01:12 dst 10.77.0.12",
        "52:54:00:00:01:13 dst 10.77.0.13",
    ] {
        assert!(fdb.contains(want), "{want} missing:\n{fdb}");
    }
    let fdb_blue = lab.exec(0, "bridge fdb show dev pdvx1002");
    assert!(
        !fdb_blue.contains("10.77.0.13"),
        "blue has no VM on host-3:\n{fdb_blue}"
    );
    let addrs = lab.exec(0, "ip -4 -o addr show");
    assert!(
        !addrs.contains("10.100.1."),
        "hosts hold no overlay address:\n{addrs}"
    );

    // SIGKILL an agent while its VMs run: they keep running and are adopted.
    let uids: Vec<(usize, String)> = {
        let mut v = Vec::new();
        for vm in &VMS {
            v.push((
                vm.host,
                machines.get(vm.name).await.expect("m").uid().expect("uid"),
            ));
        }
        v
    };
    let before: Vec<Option<u32>> = uids.iter().map(|(h, u)| pid_of(&lab, *h, u)).collect();
    assert!(before.iter().all(Option::is_some));
    lab.kill_agent(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out) = exec(&s, "red-2", "ping -c 1 -W 3 10.100.1.11");
    assert!(ok, "red-1 keeps running without its agent: {out}");
    lab.start_agent(0, &s, &socket, &image);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after: Vec<Option<u32>> = uids.iter().map(|(h, u)| pid_of(&lab, *h, u)).collect();
    assert_eq!(
        before, after,
        "the restarted agent adopted the VMs without restarting them"
    );
    eventually(60, "red-1 GuestReady under the new agent", || async {
        guest_ready(&machines, "red-1").await.then_some(())
    })
    .await;

    // SIGKILL a QEMU: it comes back.
    let (h, uid) = &uids[1];
    let old = before[1].expect("pid");
    sh(&format!("kill -9 {old}"));
    let new = eventually(60, "red-2 restarted", || async {
        pid_of(&lab, *h, uid)
            .filter(|p| *p != old && std::path::Path::new(&format!("/proc/{p}")).exists())
    })
    .await;
    assert_ne!(new, old);
    eventually(120, "red-2 GuestReady again", || async {
        guest_ready(&machines, "red-2").await.then_some(())
    })
    .await;

    // Delete everything: no QEMU, tap, bridge, VXLAN device, FDB entry or file is left.
    machines
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete machines");
    eventually(60, "VMs to go", || async {
        lab.qemu_pids().is_empty().then_some(())
    })
    .await;
    for h in 0..3 {
        eventually(30, "links to go", || async {
            let links = lab.exec(h, "ip -o link show");
            (!links.contains("pdtap") && !links.contains("pdbr") && !links.contains("pdvx"))
                .then_some(())
        })
        .await;
        assert!(
            !lab.exec(h, "nft list tables").contains("paddock"),
            "source guards left on host-{}",
            h + 1
        );
        let fdb = lab.exec(h, "bridge fdb show");
        assert!(!fdb.contains("dst 10.77."), "host-{}: {fdb}", h + 1);
        let vms = lab.hosts[h].state.join("vms");
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "VM directories left: {left:?}");
    }
}

/// Disk-image boot: a qcow2 overlay on the cached base image, kept across
/// VM restarts. The base is a one-sector disk whose boot code prints 'K' to
/// the serial console.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_image_boot_keeps_its_overlay() {
    let (s, mut lab, socket, image) = lab::start(1, "acme").await;
    let client = s.client.clone();
    let raw = s.dir.path().join("boot.raw");
    let mut sector = vec![0xBA, 0xF8, 0x03, 0xB0, b'K', 0xEE, 0xF4, 0xEB, 0xFE];
    sector.resize(510, 0);
    sector.extend([0x55, 0xAA]);
    sector.resize(1 << 20, 0);
    std::fs::write(&raw, &sector).expect("raw");
    let base = s.dir.path().join("base.qcow2");
    sh(&format!(
        "qemu-img convert -f raw -O qcow2 {} {}",
        raw.display(),
        base.display()
    ));

    let base_url = format!("file://{}", base.display());
    lab::create_image(
        &client,
        "bootsector",
        json!({"disk": {"url": base_url, "sha256": sha256(&base), "format": "qcow2"}}),
    )
    .await;
    lab::cluster_with_overlay(&client, "acme", "d", 2001, "10.102.0.0/24", "10.102.0.1").await;
    let machines: Api<Machine> = Api::namespaced(client.clone(), "acme");
    let spec = MachineSpec {
        cluster_name: "d".into(),
        role: MachineRole::Worker,
        pool: None,
        cpu: 1,
        memory: Memory::from_mib(128),
        disk: Memory::from_gib(2),
        image: Some("bootsector".into()),
        host_name: Some("host-1".into()),
        mac: None,
        ip: None,
        bootstrap_secret: None,
    };
    let m = machines
        .create(&PostParams::default(), &Machine::new("disk-1", spec))
        .await
        .expect("machine");
    lab.start_agent(0, &s, &socket, &image);
    let vmdir = lab.hosts[0].state.join("vms").join(m.uid().expect("uid"));
    eventually(60, "the boot sector to print", || async {
        std::fs::read_to_string(vmdir.join("console.log"))
            .ok()
            .filter(|c| c.contains('K'))
            .map(drop)
    })
    .await;
    let info = sh(&format!(
        "qemu-img info -U --output=json {}",
        vmdir.join("disk.qcow2").display()
    ));
    assert!(
        info.contains(&*base.to_string_lossy()) && info.contains("2147483648"),
        "overlay on the base, sized from the Machine: {info}"
    );
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(vmdir.join("disk.qcow2"))
        .expect("disk")
        .ino();
    let pid = std::fs::read_to_string(vmdir.join("qemu.pid")).expect("pid");
    sh(&format!("kill -9 {}", pid.trim()));
    eventually(60, "restart", || async {
        let p = std::fs::read_to_string(vmdir.join("qemu.pid")).ok()?;
        (p.trim() != pid.trim() && std::path::Path::new(&format!("/proc/{}", p.trim())).exists())
            .then_some(())
    })
    .await;
    assert_eq!(
        std::fs::metadata(vmdir.join("disk.qcow2"))
            .expect("disk")
            .ino(),
        inode,
        "the overlay is kept across restarts"
    );
    machines
        .delete("disk-1", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(60, "VM to go", || async {
        lab.qemu_pids().is_empty().then_some(())
    })
    .await;
    eventually(30, "directory to go", || async {
        (!vmdir.exists()).then_some(())
    })
    .await;
}
