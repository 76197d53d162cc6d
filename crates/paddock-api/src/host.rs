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
    #[serde(default, rename = "bootMAC", skip_serializing_if = "Option::is_none")]
    pub boot_mac: Option<String>,
    /// Whether the machine should be powered on, through its BMC (a host
    /// without one is never powered by Paddock). Unset means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// When true the scheduler places no new machines here.
    #[serde(default)]
    pub unschedulable: bool,
    /// The operator's word that this host is powered off and stays so
    /// (`paddock host fence`), as Kubernetes' out-of-service taint: once
    /// it is NotReady its Machines are replaced elsewhere, and their VMs
    /// are counted as gone. A host with a BMC is fenced through it instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_service: bool,
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
    /// Address of the BMC: `redfish://host[:port][/redfish/v1/Systems/ID]`
    /// (HTTPS; `redfish+http://` for plain HTTP) or `ipmi://host[:port]`.
    pub address: String,
    /// Name of the Secret (namespace `paddock-system`) holding `username` and `password`.
    pub credentials_secret: String,
    /// Name of a Secret (namespace `paddock-system`) whose `ca.crt` is the
    /// CA the BMC's TLS certificate is checked against; without it, the
    /// system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// Do not check the BMC's TLS certificate at all (self-signed BMCs on
    /// an isolated management network).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

impl BmcDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redfish => "redfish",
            Self::Ipmi => "ipmi",
        }
    }

    /// Whether an address's scheme is this driver's.
    fn takes(self, address: &str) -> bool {
        let scheme = address.split_once("://").map_or("", |(s, _)| s);
        match self {
            Self::Redfish => matches!(scheme, "redfish" | "redfish+https" | "redfish+http"),
            Self::Ipmi => scheme == "ipmi",
        }
    }
}

/// The condition a host's BMC controller keeps: whether the BMC answers
/// and accepts the credentials.
pub const BMC_CONDITION: &str = "BMCReachable";

/// Whether `mac` is a MAC address written as six pairs of hex digits
/// separated by colons.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
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
    /// The machine's power as its BMC last reported it (`On`, `Off`,
    /// `PoweringOn`, `PoweringOff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<String>,
    /// Netboot provisioning, for a host with a BMC and a boot MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
}

/// Where a bare-metal host is in being brought up by netboot, and what
/// the netboot services saw of it. Each part has one writer: the BMC
/// controller the state, the netboot services the rest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provisioning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ProvisioningState>,
    /// Why it is in that state (CamelCase), and in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The address Paddock's DHCP leases its boot NIC (full mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_address: Option<String>,
    /// When the controller last powered it on to netboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub powered_on_at: Option<Time>,
    /// When its iPXE script, with a new join token, was last served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbooted_at: Option<Time>,
    /// When it last exchanged a join token for its credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<Time>,
    /// The value of the [`REPROVISION_ANNOTATION`] last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovisioned: Option<String>,
}

/// Set (to a new value, a timestamp) to have a host with a BMC netbooted
/// afresh: told to boot from the network, power-cycled, and unfenced
/// (`paddock host reprovision`).
pub const REPROVISION_ANNOTATION: &str = "paddock.io/reprovision";

/// Held by a Host with a BMC until it is deprovisioned: powered off
/// through its BMC (when it may be on) and its Secrets — join token, host
/// credential, BMC credentials, all labelled [`HOST_LABEL`] — deleted.
pub const DEPROVISION_FINALIZER: &str = "paddock.io/deprovision";

/// The label that ties a Secret in `paddock-system` to its Host.
pub const HOST_LABEL: &str = "paddock.io/host";

/// The condition that says whether a host is fenced: powered off, by its
/// BMC (confirmed) or by the operator's word, so that its VMs cannot run.
pub const FENCED_CONDITION: &str = "Fenced";

impl Host {
    /// Whether the host is known to be off: its Machines may run elsewhere
    /// and its VMs count as gone.
    pub fn fenced(&self) -> bool {
        self.spec.out_of_service
            || self.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == FENCED_CONDITION && c.status == "True")
            })
    }
}

/// The provisioning states of a bare-metal host.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProvisioningState {
    /// Known by its BMC and boot MAC; nothing done yet.
    Registered,
    /// Told to boot from the network once, and powered on.
    PoweringOn,
    /// Its firmware fetched its iPXE script: the host image is booting.
    Netbooting,
    /// Its agent exchanged the join token; not yet reporting Ready.
    Joined,
    /// Its agent reports Ready.
    Ready,
    /// Ready, and cordoned (`spec.unschedulable`): no new Machines go
    /// there.
    Maintenance,
    /// Powered off on purpose (`spec.online: false`).
    Offline,
    /// Being deleted: powered off, its credential revoked.
    Deprovisioning,
    /// Stuck; `reason` says why. Retried with backoff.
    Error,
}

impl ProvisioningState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "Registered",
            Self::PoweringOn => "PoweringOn",
            Self::Netbooting => "Netbooting",
            Self::Joined => "Joined",
            Self::Ready => "Ready",
            Self::Maintenance => "Maintenance",
            Self::Offline => "Offline",
            Self::Deprovisioning => "Deprovisioning",
            Self::Error => "Error",
        }
    }
}

impl Validate for Host {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(bmc) = &self.spec.bmc {
            if bmc.address.is_empty() {
                errs.push(FieldError::required("spec.bmc.address"));
            } else if !bmc.driver.takes(&bmc.address) {
                let form = match bmc.driver {
                    BmcDriver::Redfish => {
                        "redfish://host[:port][/redfish/v1/Systems/ID] (or redfish+http://)"
                    }
                    BmcDriver::Ipmi => "ipmi://host[:port]",
                };
                errs.push(FieldError::invalid(
                    "spec.bmc.address",
                    format!(
                        "{:?}: a {} BMC's address is {form}",
                        bmc.address,
                        bmc.driver.as_str()
                    ),
                ));
            }
            if bmc.credentials_secret.is_empty() {
                errs.push(FieldError::required("spec.bmc.credentialsSecret"));
            }
            if bmc.insecure_skip_verify && bmc.ca_secret.is_some() {
                errs.push(FieldError::invalid(
                    "spec.bmc.insecureSkipVerify",
                    "true: a CA to check against and no check at all; set one of caSecret and insecureSkipVerify",
                ));
            }
        }
        if let Some(mac) = &self.spec.boot_mac
            && !valid_mac(mac)
        {
            errs.push(FieldError::invalid(
                "spec.bootMAC",
                format!("{mac:?}: a MAC address is six pairs of hex digits separated by colons"),
            ));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bmc(driver: BmcDriver, address: &str) -> Host {
        Host::new(
            "h",
            HostSpec {
                bmc: Some(Bmc {
                    driver,
                    address: address.into(),
                    credentials_secret: "bmc-h".into(),
                    ca_secret: None,
                    insecure_skip_verify: false,
                }),
                boot_mac: Some("52:54:00:AB:cd:01".into()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_bmc_address_matches_its_driver() {
        assert!(
            with_bmc(BmcDriver::Redfish, "redfish://10.0.0.5")
                .validate()
                .is_empty()
        );
        assert!(
            with_bmc(BmcDriver::Ipmi, "ipmi://10.0.0.5:623")
                .validate()
                .is_empty()
        );
        let errs = with_bmc(BmcDriver::Ipmi, "redfish://10.0.0.5").validate();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.bmc.address");
        assert!(
            errs[0].message.contains("ipmi://host"),
            "{}",
            errs[0].message
        );
        let errs = with_bmc(BmcDriver::Redfish, "10.0.0.5").validate();
        assert_eq!(errs[0].field, "spec.bmc.address");
    }

    #[test]
    fn boot_macs_are_checked() {
        let mut h = with_bmc(BmcDriver::Redfish, "redfish://10.0.0.5");
        h.spec.boot_mac = Some("52:54:00:ab:cd".into());
        let errs = h.validate();
        assert_eq!(errs[0].field, "spec.bootMAC");
        // The field's name on the wire is the issue's: bootMAC.
        let v = serde_json::to_value(with_bmc(BmcDriver::Redfish, "redfish://x").spec).unwrap();
        assert_eq!(v["bootMAC"], "52:54:00:AB:cd:01");
    }

    #[test]
    fn a_ca_and_no_check_at_all_are_refused_together() {
        let mut h = with_bmc(BmcDriver::Redfish, "redfish://10.0.0.5");
        if let Some(b) = h.spec.bmc.as_mut() {
            b.ca_secret = Some("bmc-ca".into());
            b.insecure_skip_verify = true;
        }
        let errs = h.validate();
        assert_eq!(errs[0].field, "spec.bmc.insecureSkipVerify");
    }
}
