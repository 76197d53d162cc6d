//! Slow, with a real distribution: a Debian 12 image that
//! `scripts/build-debian-image.sh` builds with debootstrap (systemd,
//! cloud-init, qemu-guest-agent) boots under TCG as a cluster's control
//! plane; real cloud-init applies the network config and files from the
//! bootstrap data Paddock rendered, and the Machine turns GuestReady.
//! The image has no Kubernetes, so Paddock's bootstrap script stops with a
//! message naming what is missing — which the test also checks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::lab::{self, Lab};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use paddock_api::Machine;

fn debian_image() -> PathBuf {
    let dir = std::env::var_os("PADDOCK_DEBIAN_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/paddock/debian-image"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-debian-image.sh");
    let ok = Command::new(&script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("build-debian-image.sh")
        .success();
    assert!(ok, "building the Debian image failed");
    dir
}

fn exec(s: &TestServer, vm: &str, cmd: &str) -> (bool, String) {
    machine_exec(s, "acme", vm, 60, cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debian_cloud_init_applies_paddocks_bootstrap_data() {
    let debian = debian_image();
    let dev = lab::dev_image();
    let s = TestServer::start_with(|c| c.unix_socket = Some(c.data_dir.join("api.sock"))).await;
    let socket = s.data_dir().join("api.sock");
    let mut lab = Lab::new(s.dir.path(), 1);
    let s = s.with_controllers(paddock_controllers::Config::default());
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let file = |n: &str| -> (String, String) {
        let p = debian.join(n);
        (format!("file://{}", p.display()), lab::sha256(&p))
    };
    let (k, i, d) = (file("vmlinuz"), file("initrd.img"), file("rootfs.qcow2"));
    lab::create_image(
        &s.client,
        "debian-12",
        serde_json::json!({
            "kernel": {"url": k.0, "sha256": k.1},
            "initrd": {"url": i.0, "sha256": i.1},
            "disk": {"url": d.0, "sha256": d.1},
            "cmdline": "root=/dev/vda rw",
            // Not a Kubernetes node image: the version only lets a Cluster
            // boot it, to see cloud-init apply the bootstrap data.
            "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION,
            "standIn": true,
        }),
    )
    .await;
    lab.agent_args = vec!["--heartbeat-seconds".into(), "1".into()];
    lab.start_agent(0, &s, &socket, &dev);
    s.apply(
        r#"
apiVersion: paddock.io/v1alpha1
kind: Cluster
metadata: {name: deb, namespace: acme}
spec:
  controlPlane: {replicas: 1, cpu: 1, memory: 1Gi, disk: 4Gi, image: debian-12}
"#,
    );
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let m = eventually(600, "the Debian machine GuestReady", || async {
        machines
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|m| {
                m.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "GuestReady" && c.status == "True")
                })
            })
    })
    .await;
    let name = m.name_any();
    let ip = m.spec.ip.clone().expect("ip");

    // cloud-init has finished (with or without the bootstrap script's error).
    let (_, status) = exec(&s, &name, "cloud-init status --wait --long; true");
    assert!(status.contains("status:"), "{status}");
    // Paddock's network-config: the overlay address, MTU and default route.
    let (ok, addr) = exec(&s, &name, "ip -4 -o addr show; ip -o link show; ip route");
    assert!(ok, "{addr}");
    assert!(
        addr.contains(&format!("inet {ip}")),
        "address {ip} not applied: {addr}"
    );
    assert!(addr.contains("mtu 1450"), "{addr}");
    assert!(addr.contains("default via 10.64.0.1"), "{addr}");
    let (_, host) = exec(&s, &name, "hostname");
    assert_eq!(host.trim(), name);
    // Paddock's files, as written by cloud-init.
    let ca = s
        .secret_data("acme", "deb-pki", "ca.crt")
        .expect("cluster CA");
    let (ok, got) = exec(&s, &name, "cat /etc/kubernetes/pki/ca.crt");
    assert!(ok && got == ca, "cluster CA on the node: {got}");
    let (ok, out) = exec(
        &s,
        &name,
        "stat -c '%a %n' /etc/kubernetes/pki/apiserver.key /etc/paddock/kubeadm.yaml /usr/local/sbin/paddock-bootstrap; grep -c 'kind: InitConfiguration' /etc/paddock/kubeadm.yaml",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("600 /etc/kubernetes/pki/apiserver.key"),
        "{out}"
    );
    assert!(
        out.contains("755 /usr/local/sbin/paddock-bootstrap"),
        "{out}"
    );
    // The bootstrap script ran and said why this is no Kubernetes node.
    let (_, log) = exec(&s, &name, "cat /var/log/cloud-init-output.log");
    assert!(
        log.contains("paddock-bootstrap: this image has no kubeadm"),
        "{log}"
    );
    s.kubectl_ok(&["-n", "acme", "delete", "cluster", "deb"]);
    eventually(60, "the VM gone", || async {
        lab.qemu_pids().is_empty().then_some(())
    })
    .await;
}
