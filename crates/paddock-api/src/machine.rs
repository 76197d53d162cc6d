//! `Machine`: one node VM of a workload cluster, bound to a host.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cluster::{MAX_CPU, MIN_MEMORY};
use crate::quantity::{Cpu, Memory};
use crate::validation::{FieldError, Validate, check_dns_label, check_dns_subdomain};

/// One node VM of a workload cluster.
/// The finalizer every Machine carries while a VM of it may exist. The
/// agent of the Machine's host removes it once the VM, its tap and (if no
/// other Machine of the cluster runs there) the overlay's devices are gone;
/// host health removes it for Machines that never had a host or whose Host
/// was deleted (the operator's word that it is gone for good).
pub const VM_FINALIZER: &str = "paddock.io/vm";

/// Holds a deleted Machine of a Kubernetes cluster until its Node is
/// drained and deleted (and, for a control plane, its etcd member
/// removed): the platform's workload loop removes it, and only then does
/// the host's agent stop the VM.
pub const DRAIN_FINALIZER: &str = "paddock.io/drain";

/// The merge patch that removes [`VM_FINALIZER`] from `m`, only if `m` is
/// still at the resourceVersion read (else 409, and the caller looks again).
pub fn release_patch(m: &Machine) -> serde_json::Value {
    without_finalizer(m, VM_FINALIZER)
}

/// The merge patch that removes `finalizer` from `m`, only if `m` is still
/// at the resourceVersion read.
pub fn without_finalizer(m: &Machine, finalizer: &str) -> serde_json::Value {
    use kube::ResourceExt;
    let rest: Vec<&String> = m.finalizers().iter().filter(|f| *f != finalizer).collect();
    serde_json::json!({"metadata": {"finalizers": rest, "resourceVersion": m.resource_version()}})
}

/// A deleted Machine whose Node is still to be drained: its VM keeps
/// running.
pub fn draining(m: &Machine) -> bool {
    use kube::ResourceExt;
    m.metadata.deletion_timestamp.is_some() && m.finalizers().iter().any(|f| f == DRAIN_FINALIZER)
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "paddock.io",
    version = "v1alpha1",
    kind = "Machine",
    namespaced,
    status = "MachineStatus",
    shortname = "ma",
    category = "paddock"
)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// The Cluster this machine belongs to.
    pub cluster_name: String,
    /// Control plane or worker.
    pub role: MachineRole,
    /// Node pool of a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disk: Memory,
    /// MachineImage to boot; the platform default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Host this machine is bound to; set by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// MAC address of the VM's overlay interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Overlay address of the VM, in CIDR form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Secret (same namespace) whose `user-data` and `network-config` go
    /// into the VM's seed; the VM does not start before it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_secret: Option<String>,
}

/// What a machine is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MachineRole {
    ControlPlane,
    Worker,
}

impl MachineRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlPlane => "control-plane",
            Self::Worker => "worker",
        }
    }
}

/// Where a machine is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MachinePhase {
    Pending,
    Scheduled,
    Starting,
    Running,
    Failed,
    Stopping,
}

impl MachinePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Scheduled => "Scheduled",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
        }
    }
}

/// What the agent observed of a machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MachinePhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_log: Option<String>,
    /// The Kubernetes Node this Machine became, as the workload cluster's
    /// own API reports it (written by the platform's node-status loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeStatus>,
}

/// A Machine's Node in its workload cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The Node's name (the Machine's hostname).
    pub name: String,
    /// The Node's `Ready` condition is `True`.
    pub ready: bool,
    /// The kubelet's version, such as "v1.35.4".
    #[serde(default)]
    pub kubelet_version: String,
    /// Marked unschedulable (cordoned), as before a drain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

fn check_mac(field: &str, mac: &str, errs: &mut Vec<FieldError>) {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if !ok {
        errs.push(FieldError::invalid(
            field,
            format!("{mac:?} is not a MAC address such as 52:54:00:12:34:56"),
        ));
    }
}

impl Validate for MachineSpec {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_dns_label("spec.clusterName", &self.cluster_name, 63, &mut errs);
        if self.cpu == 0 || self.cpu > MAX_CPU {
            errs.push(FieldError::invalid(
                "spec.cpu",
                format!("must be between 1 and {MAX_CPU}"),
            ));
        }
        if self.memory < MIN_MEMORY {
            errs.push(FieldError::invalid(
                "spec.memory",
                format!("must be at least {MIN_MEMORY}"),
            ));
        }
        if let Some(pool) = &self.pool {
            check_dns_label("spec.pool", pool, 63, &mut errs);
        }
        if let Some(host) = &self.host_name {
            check_dns_subdomain("spec.hostName", host, &mut errs);
        }
        if let Some(mac) = &self.mac {
            check_mac("spec.mac", mac, &mut errs);
        }
        if let Some(ip) = &self.ip {
            let ok = ip.split_once('/').is_some_and(|(a, l)| {
                a.parse::<std::net::Ipv4Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 32)
            });
            if !ok {
                errs.push(FieldError::invalid(
                    "spec.ip",
                    format!("{ip:?} is not an address in CIDR form such as 10.0.0.2/24"),
                ));
            }
        }
        errs
    }
}

impl Validate for Machine {
    fn validate(&self) -> Vec<FieldError> {
        self.spec.validate()
    }
}
