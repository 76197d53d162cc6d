//! `Cluster`: a workload Kubernetes cluster, the unit a user asks for.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};
use crate::validation::{FieldError, FieldErrorKind, Validate, check_dns_label};

/// Longest cluster name: it becomes a DNS label together with the org.
pub const MAX_CLUSTER_NAME: usize = 40;
/// Most vCPUs one Machine may ask for.
pub const MAX_CPU: u32 = 256;
/// Smallest memory a Machine may ask for.
pub const MIN_MEMORY: Memory = Memory::from_mib(128);
/// Most workers one node pool may hold.
pub const MAX_POOL_REPLICAS: u32 = 1000;

/// A workload cluster: its Kubernetes version, control plane and node pools.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "paddock.io",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "cl",
    category = "paddock"
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Kubernetes version of the cluster's nodes, such as "1.35.4": one a
    /// registered MachineImage carries. Left empty, the server sets the
    /// newest registered.
    #[serde(default)]
    pub kubernetes_version: String,
    /// The control-plane machines.
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,
    /// Groups of identical worker machines, each named once (a list keyed
    /// by `name`, which server-side apply merges by it).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub node_pools: Vec<NodePool>,
    /// In-cluster address ranges.
    #[serde(default)]
    pub network: ClusterNetwork,
    /// The workers' ingress node ports that the platform exposes.
    #[serde(default)]
    pub ingress: IngressSpec,
}

/// Where the cluster's ingress controller listens on every worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Node port for HTTP.
    #[serde(default = "default_http_node_port")]
    pub http_node_port: u16,
    /// Node port for HTTPS.
    #[serde(default = "default_https_node_port")]
    pub https_node_port: u16,
}

impl Default for IngressSpec {
    fn default() -> Self {
        Self {
            http_node_port: default_http_node_port(),
            https_node_port: default_https_node_port(),
        }
    }
}

fn default_http_node_port() -> u16 {
    30080
}
fn default_https_node_port() -> u16 {
    30443
}

/// The control plane: 1 or 3 replicas of one size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// Number of control-plane machines: 1, or 3 for high availability.
    #[serde(default = "one")]
    pub replicas: u32,
    /// vCPUs per machine.
    #[serde(default = "default_cp_cpu")]
    pub cpu: Cpu,
    /// Memory per machine.
    #[serde(default = "default_cp_memory")]
    pub memory: Memory,
    /// Root disk per machine.
    #[serde(default = "default_cp_disk")]
    pub disk: Memory,
    /// MachineImage the machines boot; the platform default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            cpu: default_cp_cpu(),
            memory: default_cp_memory(),
            disk: default_cp_disk(),
            image: None,
        }
    }
}

fn one() -> u32 {
    1
}
/// kubeadm's preflight wants 2 vCPUs and 1700 MB on a control plane.
fn default_cp_cpu() -> Cpu {
    2
}
fn default_cp_memory() -> Memory {
    Memory::from_gib(2)
}
fn default_cp_disk() -> Memory {
    Memory::from_gib(10)
}
fn default_worker_memory() -> Memory {
    Memory::from_gib(2)
}
fn default_worker_disk() -> Memory {
    Memory::from_gib(20)
}

/// A group of identical worker machines.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePool {
    /// Name of the pool, unique in the cluster.
    pub name: String,
    /// Number of workers.
    #[serde(default = "one")]
    pub replicas: u32,
    /// vCPUs per worker.
    #[serde(default = "one")]
    pub cpu: Cpu,
    /// Memory per worker.
    #[serde(default = "default_worker_memory")]
    pub memory: Memory,
    /// Root disk per worker.
    #[serde(default = "default_worker_disk")]
    pub disk: Memory,
    /// MachineImage the workers boot; the platform default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Address ranges inside the workload cluster (pods and services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        Self {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
        }
    }
}

fn default_pod_cidr() -> String {
    "192.168.0.0/16".to_owned()
}
fn default_service_cidr() -> String {
    "10.96.0.0/12".to_owned()
}

/// Where a cluster is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    Pending,
    Provisioning,
    Ready,
    Degraded,
    Deleting,
}

impl ClusterPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Degraded => "Degraded",
            Self::Deleting => "Deleting",
        }
    }
}

/// The overlay network allocated to a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverlayStatus {
    pub vni: u32,
    pub subnet: String,
    pub gateway: String,
    /// Underlay address (VTEP) where the management plane's gateway joins
    /// this overlay; hosts send it the overlay's broadcasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_vtep: Option<String>,
    /// MAC of the gateway's interface on the overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<String>,
}

/// Host index of the overlay's gateway address (`.1`) and its MAC.
pub const GATEWAY_HOST_INDEX: u32 = 1;

/// The MAC of host index `idx` on overlay `vni`: `52:54` (QEMU's prefix),
/// the VNI's three bytes, the index. Unique across overlays and hosts.
pub fn overlay_mac(vni: u32, idx: u32) -> String {
    format!(
        "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
        (vni >> 16) & 0xff,
        (vni >> 8) & 0xff,
        vni & 0xff,
        idx & 0xff
    )
}

/// Milestones of a cluster's first start.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInitialization {
    /// Set once, by the gateway, when a control-plane VM first answers on
    /// the API port: from then on the cluster's state lives in its etcd, and
    /// a lost init Machine's replacement joins instead of initializing anew.
    #[serde(default)]
    pub control_plane_initialized: bool,
}

/// The ports on the management plane that forward to the workers' ingress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    /// Address of the gateway's ingress ports, once a gateway serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub http_port: u16,
    pub https_port: u16,
    /// The workers behind the ports, as the gateway's health checks see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<IngressBackend>,
}

/// One worker behind a cluster's ingress ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackend {
    pub machine: String,
    pub ip: String,
    /// Its HTTP node port passes the health check.
    pub healthy: bool,
    /// Its HTTPS node port passes the health check.
    #[serde(default)]
    pub https_healthy: bool,
}

/// What the platform observed of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayStatus>,
    /// Where users reach the cluster's Kubernetes API (through the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization: Option<ClusterInitialization>,
    #[serde(default)]
    pub control_plane_ready: u32,
    #[serde(default)]
    pub nodes_ready: u32,
    /// Machines deleted whose VMs are not yet known to be stopped (their
    /// host's agent releases them; a host that is gone holds them until
    /// it is deleted).
    #[serde(default)]
    pub deleting_machines: u32,
    /// The Kubernetes versions the cluster's Nodes run (their kubelets),
    /// as its own API reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_versions: Vec<String>,
}

impl ClusterSpec {
    /// Total desired worker count over all pools.
    pub fn worker_replicas(&self) -> u32 {
        self.node_pools.iter().map(|p| p.replicas).sum()
    }
}

fn check_size(prefix: &str, cpu: Cpu, memory: Memory, disk: Memory, errs: &mut Vec<FieldError>) {
    if cpu == 0 || cpu > MAX_CPU {
        errs.push(FieldError::invalid(
            format!("{prefix}.cpu"),
            format!("must be between 1 and {MAX_CPU}"),
        ));
    }
    if memory < MIN_MEMORY {
        errs.push(FieldError::invalid(
            format!("{prefix}.memory"),
            format!("must be at least {MIN_MEMORY}"),
        ));
    }
    if disk < Memory::from_gib(1) {
        errs.push(FieldError::invalid(
            format!("{prefix}.disk"),
            "must be at least 1Gi",
        ));
    }
}

fn check_cidr(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    let ok = value.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            len.parse::<u8>()
                .is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 })
        })
    });
    if !ok {
        errs.push(FieldError::invalid(
            field,
            format!("{value:?} is not a CIDR such as 10.96.0.0/12"),
        ));
    }
}

impl Validate for ClusterSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let v = &self.kubernetes_version;
        if !v.is_empty()
            && let Err(e) = v.parse::<crate::version::KubeVersion>()
        {
            errs.push(FieldError::invalid("spec.kubernetesVersion", e));
        }
        let cp = &self.control_plane;
        if cp.replicas != 1 && cp.replicas != 3 {
            errs.push(FieldError::new(
                "spec.controlPlane.replicas",
                FieldErrorKind::NotSupported,
                format!("{}: supported values: 1, 3", cp.replicas),
            ));
        }
        check_size("spec.controlPlane", cp.cpu, cp.memory, cp.disk, &mut errs);
        let mut names = std::collections::HashSet::new();
        for (i, pool) in self.node_pools.iter().enumerate() {
            let p = format!("spec.nodePools[{i}]");
            check_dns_label(&format!("{p}.name"), &pool.name, 20, &mut errs);
            if !names.insert(pool.name.as_str()) {
                errs.push(FieldError::new(
                    format!("{p}.name"),
                    FieldErrorKind::Duplicate,
                    format!("{:?}: pool names must be unique", pool.name),
                ));
            }
            if pool.replicas > MAX_POOL_REPLICAS {
                errs.push(FieldError::invalid(
                    format!("{p}.replicas"),
                    format!("must be at most {MAX_POOL_REPLICAS}"),
                ));
            }
            check_size(&p, pool.cpu, pool.memory, pool.disk, &mut errs);
        }
        check_cidr("spec.network.podCidr", &self.network.pod_cidr, &mut errs);
        check_cidr(
            "spec.network.serviceCidr",
            &self.network.service_cidr,
            &mut errs,
        );
        for (field, port) in [
            ("spec.ingress.httpNodePort", self.ingress.http_node_port),
            ("spec.ingress.httpsNodePort", self.ingress.https_node_port),
        ] {
            if port == 0 {
                errs.push(FieldError::invalid(field, "must be a port, 1 to 65535"));
            }
        }
        errs
    }
}

impl Validate for Cluster {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(name) = &self.metadata.name {
            check_dns_label("metadata.name", name, MAX_CLUSTER_NAME, &mut errs);
        }
        errs.extend(self.spec.validate());
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> ClusterSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let s = parse(serde_json::json!({}));
        assert_eq!(s.kubernetes_version, "", "the server defaults it");
        assert_eq!(s.control_plane.replicas, 1);
        assert_eq!(s.control_plane.memory, Memory::from_gib(2));
        assert!(s.validate().is_empty());
    }

    #[test]
    fn rejects_with_field_paths() {
        let s = parse(serde_json::json!({
            "kubernetesVersion": "latest",
            "controlPlane": {"replicas": 2, "cpu": 0, "memory": "64Mi"},
            "nodePools": [{"name": "a", "replicas": 1}, {"name": "a"}, {"name": "Bad_"}]
        }));
        let fields: Vec<String> = s.validate().into_iter().map(|e| e.field).collect();
        for f in [
            "spec.kubernetesVersion",
            "spec.controlPlane.replicas",
            "spec.controlPlane.cpu",
            "spec.controlPlane.memory",
            "spec.nodePools[1].name",
            "spec.nodePools[2].name",
        ] {
            assert!(fields.iter().any(|x| x == f), "missing {f} in {fields:?}");
        }
    }
}
