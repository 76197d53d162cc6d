//! The real kubeadm — the one the node image ships, built from upstream by
//! `scripts/build-node-binaries.sh` — accepts every kubeadm configuration
//! Paddock renders: `kubeadm config validate` on the init, control-plane
//! join and worker join documents. Set `PADDOCK_NODE_BIN` to the directory
//! of those binaries (default `/var/cache/paddock/node-bin`).

use std::path::PathBuf;
use std::process::Command;

use paddock_bootstrap::kubeadm::{self, Pace};
use paddock_bootstrap::{ClusterPki, Node, Role};

fn kubeadm_bin() -> PathBuf {
    let dir = std::env::var_os("PADDOCK_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/paddock/node-bin"));
    let bin = dir.join("kubeadm");
    assert!(
        bin.exists(),
        "{} is missing: build it with scripts/build-node-binaries.sh",
        bin.display()
    );
    bin
}

#[test]
fn kubeadm_accepts_every_configuration_paddock_renders() {
    let bin = kubeadm_bin();
    let out = Command::new(&bin)
        .args(["version", "-o", "short"])
        .output()
        .expect("kubeadm runs");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = version.strip_prefix('v').unwrap_or(&version).to_owned();
    assert!(
        version.split('.').count() == 3,
        "kubeadm version {version:?}"
    );
    let pki = ClusterPki::generate("demo").expect("pki");
    let hash = pki.cluster_ca().expect("ca").spki_sha256().expect("hash");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [Role::InitControlPlane, Role::JoinControlPlane, Role::Worker]
        .into_iter()
        .flat_map(|role| [(role, Pace::Native), (role, Pace::Emulated)]);
    for (role, pace) in cases {
        let yaml = kubeadm::config(&Node::sample(role, &version), &pki.join_token, &hash, pace)
            .expect("config");
        let path = dir.path().join("kubeadm.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let out = Command::new(&bin)
            .args(["config", "validate", "--config"])
            .arg(&path)
            .output()
            .expect("kubeadm runs");
        assert!(
            out.status.success(),
            "kubeadm {version} refuses the {role:?} configuration at {pace:?} pace:\n{}{}\n---\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
