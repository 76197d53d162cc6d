//! The real kubeadm — the one the node image ships, built from upstream by
//! `scripts/build-node-binaries.sh` — accepts every kubeadm configuration
//! Paddock renders: `kubeadm config validate` on the init, control-plane
//! join and worker join documents. Set `PADDOCK_NODE_BIN` to the directory
//! of those binaries (default `/var/cache/paddock/node-bin`).

use std::path::{Path, PathBuf};
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

/// The binary's Kubernetes version, `1.35.4`.
fn kubeadm_version(bin: &Path) -> String {
    let out = Command::new(bin)
        .args(["version", "-o", "short"])
        .output()
        .expect("kubeadm runs");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = version.strip_prefix('v').unwrap_or(&version).to_owned();
    assert!(
        version.split('.').count() == 3,
        "kubeadm version {version:?}"
    );
    version
}

/// A cluster's PKI and its CA's pin.
fn pki() -> (ClusterPki, String) {
    let pki = ClusterPki::generate("demo").expect("pki");
    let hash = pki.cluster_ca().expect("ca").spki_sha256().expect("hash");
    (pki, hash)
}

#[test]
fn kubeadm_accepts_every_configuration_paddock_renders() {
    let bin = kubeadm_bin();
    let version = kubeadm_version(&bin);
    let (pki, hash) = pki();
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

/// The static Pods the real kubeadm writes for an emulated first control
/// plane, with the patches Paddock ships applied (`kubeadm init phase
/// control-plane` and `etcd local`, dry run into a temporary directory).
#[test]
fn kubeadm_applies_the_emulated_control_planes_patches() {
    let bin = kubeadm_bin();
    let version = kubeadm_version(&bin);
    let (pki, hash) = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let patches = dir.path().join("patches");
    std::fs::create_dir(&patches).expect("patches dir");
    for (name, body) in kubeadm::emulated_patches() {
        std::fs::write(patches.join(name), body).expect("patch");
    }
    let yaml = kubeadm::config(
        &Node::sample(Role::InitControlPlane, &version),
        &pki.join_token,
        &hash,
        Pace::Emulated,
    )
    .expect("config");
    assert!(yaml.contains(kubeadm::PATCHES_DIR), "{yaml}");
    let cfg = dir.path().join("kubeadm.yaml");
    std::fs::write(
        &cfg,
        yaml.replace(kubeadm::PATCHES_DIR, patches.to_str().expect("utf-8")),
    )
    .expect("write");
    let manifests = dir.path().join("manifests");
    for phase in [&["control-plane", "all"][..], &["etcd", "local"][..]] {
        let out = Command::new(&bin)
            .args(["init", "phase"])
            .args(phase)
            .arg("--config")
            .arg(&cfg)
            .arg("--dry-run")
            .env("KUBEADM_INIT_DRYRUN_DIR", &manifests)
            .output()
            .expect("kubeadm runs");
        assert!(
            out.status.success(),
            "kubeadm init phase {phase:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pod = |c: &str| -> serde_json::Value {
        let path = manifests.join(format!("{c}.yaml"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{c}: {e}\n{text}"))
    };
    let main = |p: &serde_json::Value| p["spec"]["containers"][0].clone();
    let args = |p: &serde_json::Value| -> Vec<String> {
        main(p)["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };

    // The controller manager waits for a healthy API server before it
    // starts, and keeps its lease through a busy minute.
    let cm = pod("kube-controller-manager");
    assert_eq!(
        main(&cm)["env"],
        serde_json::json!([{"name": kubeadm::WAIT_FOR_ENV, "value": "https://127.0.0.1:6443/healthz"}])
    );
    assert_eq!(main(&cm)["livenessProbe"]["timeoutSeconds"], 60);
    assert_eq!(main(&cm)["resources"]["requests"]["cpu"], "10m");
    assert!(
        args(&cm).contains(&"--leader-elect-lease-duration=120s".to_owned()),
        "{:?}",
        args(&cm)
    );
    // The scheduler waits for nothing (it retries on its own).
    let sched = pod("kube-scheduler");
    assert!(main(&sched)["env"].is_null(), "{sched}");
    assert_eq!(main(&sched)["resources"]["requests"]["cpu"], "10m");
    // The API server is probed every 10 s; etcd weighs as much as it.
    let api = pod("kube-apiserver");
    assert_eq!(main(&api)["readinessProbe"]["periodSeconds"], 10);
    assert_eq!(main(&api)["resources"]["requests"]["cpu"], "250m");
    let etcd = pod("etcd");
    assert_eq!(main(&etcd)["resources"]["requests"]["cpu"], "250m");
    assert!(
        args(&etcd).contains(&"--heartbeat-interval=1000".to_owned()),
        "{:?}",
        args(&etcd)
    );
}
