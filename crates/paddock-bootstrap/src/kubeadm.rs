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

/// Where the bootstrap data puts kubeadm's patches of the control plane's
/// static Pods, for [`Pace::Emulated`].
pub const PATCHES_DIR: &str = "/etc/paddock/kubeadm-patches";

/// The patches an emulated control plane's static Pods get, by file name
/// (`<component>+strategic.yaml`, as kubeadm reads them): probes that wait
/// minutes, not seconds, so that a slow start or a busy minute does not
/// make the kubelet kill a component that is only slow. The API server's
/// readiness probe (kubeadm's: every second) is asked every 10 s: each
/// probe is a TLS handshake, and on an emulated node a second's worth of
/// them kept the starting API server from answering its own clients.
pub fn emulated_patches() -> Vec<(String, String)> {
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .iter()
        .map(|c| {
            let mut extra = String::new();
            // Only the API server has a readiness probe to change: a patch
            // would give the others one without a handler.
            if *c == "kube-apiserver" {
                extra.push_str("    readinessProbe: {timeoutSeconds: 60, periodSeconds: 10}\n");
            }
            // CPU requests set the pods' cgroup weights. On one emulated
            // core the API server's start-up hooks ran out of their fixed
            // 30 s while the scheduler and controller manager, which can do
            // nothing until it serves, took a third of the CPU retrying:
            // now etcd weighs as much as the API server (kubeadm gives it
            // 100m beside 250m) and the two waiting components next to
            // nothing. The requests sum to less than kubeadm's own.
            match *c {
                "etcd" => extra.push_str("    resources: {requests: {cpu: 250m}}\n"),
                "kube-controller-manager" => {
                    extra.push_str("    resources: {requests: {cpu: 10m}}\n");
                    extra.push_str(&wait_for_api_server());
                }
                "kube-scheduler" => extra.push_str("    resources: {requests: {cpu: 10m}}\n"),
                _ => {}
            }
            (
                format!("{c}+strategic.yaml"),
                format!(
                    "spec:\n  containers:\n  - name: {c}\n    livenessProbe: {{timeoutSeconds: 60, periodSeconds: 30, failureThreshold: 20}}\n    startupProbe: {{timeoutSeconds: 60, periodSeconds: 30, failureThreshold: 60}}\n{extra}"
                ),
            )
        })
        .collect()
}

/// What the node image's `kube` binary waits for before it starts a
/// component, when set in that component's environment: a URL that must
/// answer 200 (`images/kube/main.go`).
pub const WAIT_FOR_ENV: &str = "PADDOCK_WAIT_FOR";

/// Holds the controller manager until the API server's `/healthz` answers
/// 200. Once it holds the leader lease, the controller manager gives the
/// API server 10 s to be healthy and exits otherwise; an emulated API
/// server that had just begun to serve took longer, and the restarted
/// controller manager then waited out its own lost lease (two minutes at
/// [`Pace::Emulated`]) before it gave the first Node its pod range.
/// (busybox's wget, tried first, cannot handshake with the API server's
/// TLS.) Strategic-merge YAML, inside the container.
fn wait_for_api_server() -> String {
    format!("    env:\n    - {{name: {WAIT_FOR_ENV}, value: \"https://127.0.0.1:6443/healthz\"}}\n")
}

impl Pace {
    /// Leader election of the controller manager and scheduler: kubeadm's
    /// defaults (15 s lease, 10 s to renew) lose the lease on a busy
    /// emulated node, and the component exits.
    fn leader_election(self) -> Option<Value> {
        match self {
            Pace::Native => None,
            Pace::Emulated => Some(json!([
                {"name": "leader-elect-lease-duration", "value": "120s"},
                {"name": "leader-elect-renew-deadline", "value": "90s"},
                {"name": "leader-elect-retry-period", "value": "15s"},
            ])),
        }
    }

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
                "apiServer": {"certSANs": n.cluster_sans()},
            });
            if v1beta4 {
                init["timeouts"] = pace.timeouts();
                if let Some(le) = pace.leader_election() {
                    cluster["controllerManager"] = json!({"extraArgs": le});
                    cluster["scheduler"] = json!({"extraArgs": le});
                    // etcd's raft: heartbeats and elections ten times as slow.
                    cluster["etcd"] = json!({"local": {"extraArgs": [
                        {"name": "heartbeat-interval", "value": "1000"},
                        {"name": "election-timeout", "value": "10000"},
                    ]}});
                    init["patches"] = json!({"directory": PATCHES_DIR});
                }
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
                if pace == Pace::Emulated && n.role == Role::JoinControlPlane {
                    join["patches"] = json!({"directory": PATCHES_DIR});
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_patches_weigh_the_api_server_and_etcd_over_the_waiting_components() {
        let cpu = |c: &str| -> Option<String> {
            let (_, body) = emulated_patches()
                .into_iter()
                .find(|(f, _)| f == &format!("{c}+strategic.yaml"))
                .expect(c);
            let v: Value = serde_saphyr::from_str(&body).expect("patch is YAML");
            let container = &v["spec"]["containers"][0];
            assert_eq!(container["name"], c);
            assert_eq!(container["livenessProbe"]["timeoutSeconds"], 60);
            container["resources"]["requests"]["cpu"]
                .as_str()
                .map(str::to_owned)
        };
        // The API server keeps kubeadm's 250m.
        assert_eq!(cpu("kube-apiserver"), None);
        assert_eq!(cpu("etcd").as_deref(), Some("250m"));
        assert_eq!(cpu("kube-controller-manager").as_deref(), Some("10m"));
        assert_eq!(cpu("kube-scheduler").as_deref(), Some("10m"));
        // Only the controller manager waits for the API server to be healthy.
        for (file, body) in emulated_patches() {
            let v: Value = serde_saphyr::from_str(&body).expect("patch is YAML");
            let env = &v["spec"]["containers"][0]["env"];
            if file.starts_with("kube-controller-manager+") {
                assert_eq!(env[0]["name"], WAIT_FOR_ENV, "{body}");
                assert_eq!(env[0]["value"], "https://127.0.0.1:6443/healthz");
            } else {
                assert!(env.is_null(), "{file}: {body}");
            }
        }
    }
}
