//! kubeadm configuration documents: `InitConfiguration` +
//! `ClusterConfiguration` for the first control-plane node,
//! `JoinConfiguration` for the others and for workers.
//!
//! Kubernetes 1.31 and later get `kubeadm.k8s.io/v1beta4` (whose
//! `kubeletExtraArgs` is a list of name/value pairs); older ones `v1beta3`.

use serde_json::{Value, json};

use crate::{BootstrapError, Node, Role};

/// How fast the node runs, which sets how long kubeadm waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Hardware virtualization (KVM) or bare metal: kubeadm's own timeouts.
    Native,
    /// Software emulation (QEMU's TCG, about 15 times slower): every wait
    /// of kubeadm's is four times as long.
    Emulated,
}

impl Pace {
    /// kubeadm's waits (`v1beta4` `timeouts`) at this pace.
    fn timeouts(self) -> Value {
        // kubeadm's defaults, in seconds.
        let base = [
            ("controlPlaneComponentHealthCheck", 240),
            ("kubeletHealthCheck", 240),
            ("kubernetesAPICall", 60),
            ("etcdAPICall", 120),
            ("tlsBootstrap", 300),
            ("discovery", 300),
        ];
        let factor = match self {
            Pace::Native => 1,
            Pace::Emulated => 4,
        };
        Value::Object(
            base.iter()
                .map(|(k, secs)| ((*k).to_owned(), json!(format!("{}s", secs * factor))))
                .collect(),
        )
    }
}

/// The API group version kubeadm accepts for `version` ("1.31.2").
pub fn api_version(kubernetes_version: &str) -> &'static str {
    let minor = kubernetes_version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if minor >= 31 {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    }
}

fn node_registration(n: &Node) -> Value {
    let ip = n.ip().to_string();
    let args = if api_version(&n.kubernetes_version).ends_with("v1beta4") {
        json!([{"name": "node-ip", "value": ip}])
    } else {
        json!({"node-ip": ip})
    };
    let mut reg = json!({
        "name": n.hostname,
        "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": args,
    });
    if n.role == Role::Worker {
        reg["taints"] = json!([]);
    }
    reg
}

/// The documents for `kubeadm init` or `kubeadm join`, as YAML.
pub fn config(
    n: &Node,
    join_token: &str,
    ca_hash: &str,
    pace: Pace,
) -> Result<String, BootstrapError> {
    let api = api_version(&n.kubernetes_version);
    let v1beta4 = api.ends_with("v1beta4");
    let endpoint = format!("{}:6443", n.gateway);
    let ip = n.ip().to_string();
    let docs: Vec<Value> = match n.role {
        Role::InitControlPlane => {
            let mut init = json!({
                "apiVersion": api,
                "kind": "InitConfiguration",
                "bootstrapTokens": [{
                    "token": join_token,
                    "ttl": "0s",
                    "groups": ["system:bootstrappers:kubeadm:default-node-token"],
                    "usages": ["signing", "authentication"],
                }],
                "localAPIEndpoint": {"advertiseAddress": ip, "bindPort": 6443},
                "nodeRegistration": node_registration(n),
            });
            let mut cluster = json!({
                "apiVersion": api,
                "kind": "ClusterConfiguration",
                "kubernetesVersion": format!("v{}", n.kubernetes_version),
                "clusterName": n.cluster,
                "controlPlaneEndpoint": endpoint,
                "certificatesDir": "/etc/kubernetes/pki",
                "networking": {
                    "podSubnet": n.pod_cidr,
                    "serviceSubnet": n.service_cidr,
                    "dnsDomain": "cluster.local",
                },
                "apiServer": {"certSANs": n.apiserver_sans()},
            });
            if v1beta4 {
                init["timeouts"] = pace.timeouts();
            } else if pace == Pace::Emulated {
                cluster["apiServer"]["timeoutForControlPlane"] = json!("16m0s");
            }
            vec![init, cluster]
        }
        Role::JoinControlPlane | Role::Worker => {
            let mut join = json!({
                "apiVersion": api,
                "kind": "JoinConfiguration",
                "discovery": {"bootstrapToken": {
                    "apiServerEndpoint": endpoint,
                    "token": join_token,
                    "caCertHashes": [format!("sha256:{ca_hash}")],
                }},
                "nodeRegistration": node_registration(n),
            });
            if v1beta4 {
                join["timeouts"] = pace.timeouts();
            }
            if n.role == Role::JoinControlPlane {
                join["controlPlane"] =
                    json!({"localAPIEndpoint": {"advertiseAddress": ip, "bindPort": 6443}});
            }
            vec![join]
        }
    };
    let docs = docs
        .iter()
        .map(|d| serde_saphyr::to_string(d).map_err(|e| BootstrapError::Yaml(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
