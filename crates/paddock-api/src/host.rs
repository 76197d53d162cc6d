//! `Host`: one physical (or virtual) machine of the fleet that runs VMs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};
use crate::validation::{FieldError, Validate};

/// A machine of the fleet.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "paddock.io",
    version = "v1alpha1",
    kind = "Host",
    status = "HostStatus",
    category = "paddock"
)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    /// Baseboard management controller, for power and boot control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,
    /// MAC address the host PXE-boots from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mac: Option<String>,
    /// When true the scheduler places no new machines here.
    #[serde(default)]
    pub unschedulable: bool,
}

/// Namespace of the platform's own objects: host leases, overlay claims.
pub const SYSTEM_NAMESPACE: &str = "paddock-system";

/// Name of the Lease (in [`SYSTEM_NAMESPACE`]) that a host's agent renews
/// as its heartbeat.
pub fn lease_name(host: &str) -> String {
    format!("host-{host}")
}

/// How to reach a host's BMC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bmc {
    pub driver: BmcDriver,
    /// Address of the BMC, `host[:port]`.
    pub address: String,
    /// Name of the Secret (namespace `paddock-system`) holding `username` and `password`.
    pub credentials_secret: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    Redfish,
    Ipmi,
}

/// Where a host is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum HostPhase {
    Registering,
    Ready,
    NotReady,
}

impl Host {
    /// The host's underlay address (its VTEP), once its agent reported it.
    pub fn vtep(&self) -> Option<std::net::Ipv4Addr> {
        self.status.as_ref()?.underlay_ip.as_deref()?.parse().ok()
    }
}

impl HostPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registering => "Registering",
            Self::Ready => "Ready",
            Self::NotReady => "NotReady",
        }
    }
}

/// CPU and memory of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
}

/// What the agent and the controllers observed of a host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<HostPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Resources>,
    /// Underlay address: the host's VXLAN tunnel endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// Where the management plane reaches the agent (`unix:///path` or `https://addr:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<String>,
    /// How VMs run here: `kvm` or `tcg` (software emulation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
}

impl Validate for Host {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(bmc) = &self.spec.bmc {
            if bmc.address.is_empty() {
                errs.push(FieldError::required("spec.bmc.address"));
            }
            if bmc.credentials_secret.is_empty() {
                errs.push(FieldError::required("spec.bmc.credentialsSecret"));
            }
        }
        errs
    }
}
