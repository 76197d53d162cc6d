//! Bootstrap data for the nodes of a workload cluster: the cluster's PKI
//! ([`pki`]), kubeadm's configuration ([`kubeadm`]), and what a Machine's
//! NoCloud seed carries — cloud-init user-data that writes the certificates
//! and configuration in place and runs `kubeadm init` or `kubeadm join`
//! then starts the pod network, and a version 2 network-config with the
//! Machine's overlay address.
//!
//! ## Image requirements
//! A Kubernetes node image (`scripts/build-kube-node-image.sh`) boots with
//! cloud-init (NoCloud datasource), qemu-guest-agent, containerd, kubeadm
//! and kubelet of the cluster's Kubernetes version with every container
//! image they need already loaded, `paddock-podnet` (the pod network,
//! `images/podnet`) with its unit, and the kernel modules `overlay` and
//! `br_netfilter`. The user-data's `/usr/local/sbin/paddock-bootstrap`
//! checks for these and says which is missing.
//!
//! kubeadm's waits suit the node's speed: the script asks
//! `systemd-detect-virt`, and a guest of QEMU's software emulation
//! (`qemu`, where KVM guests say `kvm`) runs with [`kubeadm::Pace::Emulated`].

pub mod kubeadm;
pub mod pki;

use std::net::Ipv4Addr;

use base64::Engine;
use paddock_pki::{CertPair, PkiError};
use serde_json::{Value, json};

pub use pki::ClusterPki;

/// The Secret that holds one Machine's bootstrap data.
pub fn secret_name(machine: &str) -> String {
    format!("{machine}-bootstrap")
}

/// The pod network's settings on the node, read by the image's
/// `paddock-podnet.service`.
pub const PODNET_ENV: &str = "/etc/paddock/podnet.env";

/// What the pod network may read: every Node (their pod ranges and
/// addresses). Kubernetes 1.35's Node authorizer lets a kubelet read only
/// its own Node, so the first control plane binds this role to the nodes'
/// group.
pub const PODNET_RBAC: &str = "/etc/paddock/podnet-rbac.yaml";
const PODNET_RBAC_YAML: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "paddock:podnet"}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "paddock:podnet"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "paddock:podnet"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}
"#;

/// The `type` of a Machine's bootstrap data Secret.
pub const SECRET_TYPE: &str = "paddock.io/bootstrap-data";
/// Keys of the bootstrap data Secret.
pub const USER_DATA: &str = "user-data";
pub const NETWORK_CONFIG: &str = "network-config";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the PKI Secret has no valid {0:?}")]
    MissingKey(String),
    #[error("certificates")]
    Pki(#[from] PkiError),
    #[error("{0:?} is not an IPv4 address in CIDR form")]
    Address(String),
    #[error("rendering YAML: {0}")]
    Yaml(String),
}

/// What a node is in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The first control-plane node: `kubeadm init`, then the CNI.
    InitControlPlane,
    /// A further control-plane node: `kubeadm join --control-plane`.
    JoinControlPlane,
    Worker,
}

/// One node of a cluster, as its bootstrap data needs it.
#[derive(Debug, Clone)]
pub struct Node {
    pub cluster: String,
    /// The organization (namespace) of the cluster.
    pub org: String,
    pub hostname: String,
    pub role: Role,
    /// Overlay address in CIDR form, `10.64.0.10/24`.
    pub address: String,
    pub mac: String,
    /// The overlay's gateway: default route, and where the gateway answers
    /// for the cluster's API inside the overlay (`controlPlaneEndpoint`).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub kubernetes_version: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    /// The cluster's name at the gateway, `<cluster>.<org>.<base-domain>`.
    pub api_name: String,
}

impl Node {
    /// A sample node of cluster `demo` in organization `acme`, for examples
    /// and tests.
    pub fn sample(role: Role, kubernetes_version: &str) -> Self {
        Node {
            cluster: "demo".into(),
            org: "acme".into(),
            hostname: "demo-cp-abcde".into(),
            role,
            address: "10.64.0.10/24".into(),
            mac: "52:54:00:03:e8:0a".into(),
            gateway: Ipv4Addr::new(10, 64, 0, 1),
            mtu: 1450,
            kubernetes_version: kubernetes_version.into(),
            pod_cidr: "192.168.0.0/16".into(),
            service_cidr: "10.96.0.0/12".into(),
            api_name: "demo.acme.paddock.local".into(),
        }
    }
}

/// What goes into a Machine's seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapData {
    pub user_data: String,
    pub network_config: String,
}

impl Node {
    pub fn ip(&self) -> Ipv4Addr {
        self.address
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The first address of the service range: the in-cluster `kubernetes` Service.
    pub fn service_ip(&self) -> Option<Ipv4Addr> {
        let net: Ipv4Addr = self.service_cidr.split('/').next()?.parse().ok()?;
        Some(Ipv4Addr::from(u32::from(net).wrapping_add(1)))
    }

    /// The cluster's own names for its API, the same on every control
    /// plane: its name under the gateway's domain and the overlay gateway
    /// it is reached through. kubeadm keeps these in the ClusterConfiguration
    /// it uploads, and a control plane that joins later checks its own
    /// certificate against them, so nothing of one node belongs here.
    pub fn cluster_sans(&self) -> Vec<String> {
        vec![self.api_name.clone(), self.gateway.to_string()]
    }

    /// Names and addresses this node's API server answers to: the
    /// cluster's, the `kubernetes` Service's, and the node's own.
    pub fn apiserver_sans(&self) -> Vec<String> {
        let mut s = self.cluster_sans();
        s.extend([
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
            self.hostname.clone(),
            self.ip().to_string(),
        ]);
        if let Some(ip) = self.service_ip() {
            s.push(ip.to_string());
        }
        s
    }
}

/// The version 2 network-config for one interface with a static address.
/// Written by hand so the MAC is always quoted: YAML 1.1 (PyYAML, so
/// cloud-init) reads an all-digit `52:54:00:03:00:10` as a number.
pub fn network_config(mac: &str, address: &str, gateway: Option<Ipv4Addr>, mtu: u32) -> String {
    let mut s = format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    set-name: eth0\n    mtu: {mtu}\n    addresses: [{address}]\n"
    );
    if let Some(gw) = gateway {
        s.push_str(&format!(
            "    routes:\n    - to: 0.0.0.0/0\n      via: {gw}\n"
        ));
    }
    s
}

fn yaml(v: &Value) -> Result<String, BootstrapError> {
    serde_saphyr::to_string(v).map_err(|e| BootstrapError::Yaml(e.to_string()))
}

fn file(path: &str, permissions: &str, content: &str) -> Value {
    json!({
        "path": path,
        "owner": "root:root",
        "permissions": permissions,
        "encoding": "b64",
        "content": base64::engine::general_purpose::STANDARD.encode(content),
    })
}

/// On an emulated first control plane, CoreDNS's probes are made patient
/// (kubeadm's liveness probe gives it 5 s, and a starved emulated node's
/// CoreDNS was killed over and over before it had listed the API). Tried
/// for a few minutes; never fatal: KVM nodes keep kubeadm's probes.
const CORE_DNS_EMULATED: &str = r#"if [ "$config" = /etc/paddock/kubeadm-emulated.yaml ]; then
  probes='{"spec":{"template":{"spec":{"containers":[{"name":"coredns","livenessProbe":{"initialDelaySeconds":300,"periodSeconds":30,"timeoutSeconds":30,"failureThreshold":10},"readinessProbe":{"periodSeconds":10,"timeoutSeconds":10}}]}}}}'
  for _ in $(seq 60); do
    kubectl --kubeconfig /etc/kubernetes/admin.conf -n kube-system patch deployment coredns -p "$probes" && break
    sleep 5
  done || log "could not make CoreDNS's probes patient"
fi
"#;

const BOOTSTRAP_SCRIPT: &str = r#"#!/bin/sh
# Paddock node bootstrap, written by cloud-init from Paddock's user-data.
set -eu
log() { echo "paddock-bootstrap: $*" | tee /dev/console >&2; }
[ -f /etc/kubernetes/kubelet.conf ] && { log "already part of the cluster"; exit 0; }
for b in kubeadm kubelet containerd paddock-podnet; do
  command -v "$b" >/dev/null 2>&1 || {
    log "this image has no $b: it is not a Kubernetes node image (needs containerd, kubeadm, kubelet, paddock-podnet)"
    exit 1
  }
done
# kubeadm waits longer on a guest of QEMU's software emulation (TCG):
# systemd-detect-virt says kvm under KVM and qemu without it.
config=/etc/paddock/kubeadm.yaml
if [ "$(systemd-detect-virt 2>/dev/null || true)" = qemu ]; then
  config=/etc/paddock/kubeadm-emulated.yaml
  log "software-emulated guest: kubeadm waits four times as long"
  # One host core runs this whole guest. When it is short, the pods (the
  # control plane's API server and etcd first, by their CPU requests) go
  # before system.slice: the kubelet, containerd and journald, whose retries
  # against an API server still starting took half the CPU it needed.
  systemctl set-property --runtime system.slice CPUWeight=20
fi
# The kubelet gives pods the node's resolver configuration and refuses to
# start a pod without one; an image may come with none.
[ -e /etc/resolv.conf ] || printf 'nameserver %s\n' "$PADDOCK_GATEWAY" >/etc/resolv.conf
modprobe overlay || true
modprobe br_netfilter || true
sysctl --system >/dev/null
systemctl enable --now containerd kubelet
"#;

/// Renders a node's bootstrap data. Control-plane nodes get the shared CAs
/// with their keys and an API server certificate issued to this node;
/// workers get none of it: `kubeadm join` fetches the cluster CA over the
/// bootstrap token, checks it against the pinned hash, and refuses to run
/// where a `ca.crt` is already in place.
pub fn render(n: &Node, pki: &ClusterPki) -> Result<BootstrapData, BootstrapError> {
    Renderer::new(pki)?.render(n)
}

/// Renders the bootstrap data of many nodes of one cluster: its CA is read
/// and hashed once, not once per node.
pub struct Renderer<'a> {
    pki: &'a ClusterPki,
    ca: paddock_pki::Ca,
    ca_hash: String,
}

impl<'a> Renderer<'a> {
    pub fn new(pki: &'a ClusterPki) -> Result<Self, BootstrapError> {
        let ca = pki.cluster_ca()?;
        let ca_hash = ca.spki_sha256()?;
        Ok(Self { pki, ca, ca_hash })
    }

    /// One node's bootstrap data (see [`render`]).
    pub fn render(&self, n: &Node) -> Result<BootstrapData, BootstrapError> {
        render_with(n, self.pki, &self.ca, &self.ca_hash)
    }
}

fn render_with(
    n: &Node,
    pki: &ClusterPki,
    ca: &paddock_pki::Ca,
    ca_hash: &str,
) -> Result<BootstrapData, BootstrapError> {
    let mut files = Vec::new();
    let control_plane = n.role != Role::Worker;
    if control_plane {
        files.push(file("/etc/kubernetes/pki/ca.crt", "0644", &pki.ca.cert_pem));
        let apiserver: CertPair = ca.issue_server(
            "kube-apiserver",
            &n.apiserver_sans(),
            pki::APISERVER_VALIDITY,
        )?;
        for (path, mode, body) in [
            ("/etc/kubernetes/pki/ca.key", "0600", &pki.ca.key_pem),
            (
                "/etc/kubernetes/pki/apiserver.crt",
                "0644",
                &apiserver.cert_pem,
            ),
            (
                "/etc/kubernetes/pki/apiserver.key",
                "0600",
                &apiserver.key_pem,
            ),
            (
                "/etc/kubernetes/pki/etcd/ca.crt",
                "0644",
                &pki.etcd_ca.cert_pem,
            ),
            (
                "/etc/kubernetes/pki/etcd/ca.key",
                "0600",
                &pki.etcd_ca.key_pem,
            ),
            (
                "/etc/kubernetes/pki/front-proxy-ca.crt",
                "0644",
                &pki.front_proxy_ca.cert_pem,
            ),
            (
                "/etc/kubernetes/pki/front-proxy-ca.key",
                "0600",
                &pki.front_proxy_ca.key_pem,
            ),
            ("/etc/kubernetes/pki/sa.pub", "0644", &pki.sa.cert_pem),
            ("/etc/kubernetes/pki/sa.key", "0600", &pki.sa.key_pem),
        ] {
            files.push(file(path, mode, body));
        }
    }
    for (path, pace) in [
        ("/etc/paddock/kubeadm.yaml", kubeadm::Pace::Native),
        (
            "/etc/paddock/kubeadm-emulated.yaml",
            kubeadm::Pace::Emulated,
        ),
    ] {
        files.push(file(
            path,
            "0600",
            &kubeadm::config(n, &pki.join_token, ca_hash, pace)?,
        ));
    }
    if control_plane {
        for (name, body) in kubeadm::emulated_patches() {
            files.push(file(
                &format!("{}/{name}", kubeadm::PATCHES_DIR),
                "0644",
                &body,
            ));
        }
    }
    files.push(file(
        PODNET_ENV,
        "0644",
        &format!(
            "# paddock-podnet.service: the cluster's pod range and the overlay's MTU\nPOD_CIDR={}\nMTU={}\n",
            n.pod_cidr, n.mtu
        ),
    ));
    files.push(file(
        "/etc/modules-load.d/paddock-k8s.conf",
        "0644",
        "overlay\nbr_netfilter\n",
    ));
    files.push(file(
        "/etc/sysctl.d/90-paddock-k8s.conf",
        "0644",
        "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\n",
    ));
    let mut script = BOOTSTRAP_SCRIPT.replace("\"$PADDOCK_GATEWAY\"", &n.gateway.to_string());
    match n.role {
        Role::InitControlPlane => {
            files.push(file(PODNET_RBAC, "0644", PODNET_RBAC_YAML));
            script.push_str("kubeadm init --config \"$config\"\n");
            script.push_str(&format!(
                "until kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f {PODNET_RBAC}; do sleep 5; done\n"
            ));
            script.push_str(CORE_DNS_EMULATED);
        }
        Role::JoinControlPlane | Role::Worker => {
            script.push_str("kubeadm join --config \"$config\"\n");
        }
    }
    script.push_str("systemctl enable --now paddock-podnet\n");
    script.push_str("log \"joined cluster as $(hostname)\"\n");
    files.push(file("/usr/local/sbin/paddock-bootstrap", "0755", &script));
    let cfg = json!({
        "hostname": n.hostname,
        "manage_etc_hosts": true,
        "write_files": files,
        "runcmd": [["/usr/local/sbin/paddock-bootstrap"]],
    });
    Ok(BootstrapData {
        user_data: format!("#cloud-config\n{}", yaml(&cfg)?),
        network_config: network_config(&n.mac, &n.address, Some(n.gateway), n.mtu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(role: Role) -> Node {
        Node::sample(role, "1.31.2")
    }

    #[test]
    fn one_renderer_for_many_nodes_renders_what_render_does() {
        let pki = ClusterPki::generate("demo").unwrap();
        let r = Renderer::new(&pki).unwrap();
        for role in [Role::Worker, Role::JoinControlPlane] {
            let (a, b) = (
                r.render(&node(role)).unwrap(),
                render(&node(role), &pki).unwrap(),
            );
            assert_eq!(a.network_config, b.network_config);
            if role == Role::Worker {
                // Workers get no certificate of their own: byte for byte.
                assert_eq!(a.user_data, b.user_data);
            } else {
                // Each API server certificate is issued afresh; the files are the same.
                for f in [
                    "apiserver.crt",
                    "ca.key",
                    "kubeadm.yaml",
                    "paddock-bootstrap",
                ] {
                    assert!(a.user_data.contains(f) && b.user_data.contains(f), "{f}");
                }
            }
        }
    }

    #[test]
    fn control_plane_gets_keys_and_workers_do_not() {
        let pki = ClusterPki::generate("demo").unwrap();
        let cp = render(&node(Role::InitControlPlane), &pki).unwrap();
        assert!(cp.user_data.starts_with("#cloud-config\n"));
        let v: Value = serde_saphyr::from_str(&cp.user_data).unwrap();
        let paths: Vec<&str> = v["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        for p in [
            "/etc/kubernetes/pki/ca.key",
            "/etc/kubernetes/pki/apiserver.crt",
            "/etc/kubernetes/pki/sa.key",
            "/etc/paddock/kubeadm.yaml",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let w = render(&node(Role::Worker), &pki).unwrap();
        assert!(!w.user_data.contains("ca.key") && !w.user_data.contains("apiserver"));
        // kubeadm join refuses a worker with a ca.crt in place.
        assert!(
            !w.user_data.contains("/etc/kubernetes/pki/"),
            "{}",
            w.user_data
        );
        let net: Value = serde_saphyr::from_str(&w.network_config).unwrap();
        assert_eq!(net["ethernets"]["eth0"]["addresses"][0], "10.64.0.10/24");
        assert_eq!(net["ethernets"]["eth0"]["routes"][0]["via"], "10.64.0.1");
    }

    /// kubeadm uploads the init node's ClusterConfiguration, and a control
    /// plane that joins later checks its own API server certificate against
    /// its certSANs: they must hold nothing of the init node (a three
    /// control-plane cluster failed to join on exactly that).
    #[test]
    fn cluster_cert_sans_hold_nothing_of_one_node() {
        let pki = ClusterPki::generate("demo").unwrap();
        let hash = pki.cluster_ca().unwrap().spki_sha256().unwrap();
        let init = node(Role::InitControlPlane);
        let y = kubeadm::config(&init, &pki.join_token, &hash, kubeadm::Pace::Native).unwrap();
        let cluster = y
            .split("---")
            .map(|d| serde_saphyr::from_str::<Value>(d).unwrap())
            .find(|d| d["kind"] == "ClusterConfiguration")
            .expect("a ClusterConfiguration");
        let sans: Vec<&str> = cluster["apiServer"]["certSANs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!sans.contains(&init.hostname.as_str()), "{sans:?}");
        assert!(!sans.contains(&init.ip().to_string().as_str()), "{sans:?}");
        let mut joiner = node(Role::JoinControlPlane);
        joiner.hostname = "demo-cp-fghij".into();
        joiner.address = "10.64.0.11/24".into();
        let theirs = joiner.apiserver_sans();
        for san in sans {
            assert!(theirs.iter().any(|t| t == san), "{san} not in {theirs:?}");
        }
    }

    #[test]
    fn kubeadm_join_pins_the_ca() {
        let pki = ClusterPki::generate("demo").unwrap();
        let hash = pki.cluster_ca().unwrap().spki_sha256().unwrap();
        let y = kubeadm::config(
            &node(Role::Worker),
            &pki.join_token,
            &hash,
            kubeadm::Pace::Native,
        )
        .unwrap();
        assert!(y.contains("kind: JoinConfiguration"), "{y}");
        assert!(y.contains(&format!("sha256:{hash}")), "{y}");
        assert!(y.contains("10.64.0.1:6443"), "{y}");
        let init = kubeadm::config(
            &node(Role::InitControlPlane),
            &pki.join_token,
            &hash,
            kubeadm::Pace::Native,
        )
        .unwrap();
        assert!(
            init.contains("kind: InitConfiguration") && init.contains("kind: ClusterConfiguration")
        );
        assert!(init.contains("kubeadm.k8s.io/v1beta4"));
        assert_eq!(kubeadm::api_version("1.30.4"), "kubeadm.k8s.io/v1beta3");
    }

    #[test]
    fn emulated_nodes_wait_longer_and_nothing_is_fetched() {
        let pki = ClusterPki::generate("demo").unwrap();
        let hash = pki.cluster_ca().unwrap().spki_sha256().unwrap();
        let n = node(Role::InitControlPlane);
        let native = kubeadm::config(&n, &pki.join_token, &hash, kubeadm::Pace::Native).unwrap();
        let slow = kubeadm::config(&n, &pki.join_token, &hash, kubeadm::Pace::Emulated).unwrap();
        assert!(
            native.contains("controlPlaneComponentHealthCheck: 240s"),
            "{native}"
        );
        assert!(
            slow.contains("controlPlaneComponentHealthCheck: 960s"),
            "{slow}"
        );
        assert!(
            slow.contains("leader-elect-lease-duration") && slow.contains(kubeadm::PATCHES_DIR)
        );
        assert!(!native.contains("leader-elect") && !native.contains("patches"));
        let d = render(&n, &pki).unwrap();
        let v: Value = serde_saphyr::from_str(&d.user_data).unwrap();
        let files = v["write_files"].as_array().unwrap();
        let body = |path: &str| -> String {
            let f = files.iter().find(|f| f["path"] == path).unwrap();
            let b = base64::engine::general_purpose::STANDARD
                .decode(f["content"].as_str().unwrap())
                .unwrap();
            String::from_utf8(b).unwrap()
        };
        let script = body("/usr/local/sbin/paddock-bootstrap");
        assert!(script.contains("kubeadm-emulated.yaml") && script.contains("systemd-detect-virt"));
        assert!(
            script.contains("set-property --runtime system.slice CPUWeight=20"),
            "{script}"
        );
        assert!(
            script.contains("kubeadm init --config \"$config\""),
            "{script}"
        );
        // CoreDNS's probes are made patient after init, on emulated nodes
        // only, with a patch that is JSON, in a script the shell reads.
        let init = script.find("kubeadm init").unwrap();
        let patch = script.find("patch deployment coredns").unwrap();
        assert!(patch > init, "{script}");
        let probes = script
            .split("probes='")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .unwrap();
        let v: Value = serde_json::from_str(probes).unwrap();
        assert_eq!(
            v.pointer("/spec/template/spec/containers/0/livenessProbe/timeoutSeconds"),
            Some(&json!(30))
        );
        let sh = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(sh.success(), "sh -n: {script}");
        assert!(
            script.contains("systemctl enable --now paddock-podnet"),
            "{script}"
        );
        assert!(!d.user_data.contains("http"), "nothing comes from outside");
        assert!(body(PODNET_RBAC).contains("system:nodes"));
        let env = body(PODNET_ENV);
        assert!(
            env.contains("POD_CIDR=192.168.0.0/16") && env.contains("MTU=1450"),
            "{env}"
        );
    }
}
