//! The agent's own `Host`: registration with the machine's capacity, and
//! the `Lease` it renews as its heartbeat.

use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use paddock_api::host::Resources;
use paddock_api::{Host, HostPhase, HostSpec, HostStatus, Memory};
use serde_json::json;

/// CPUs and memory of this machine.
pub fn capacity() -> Resources {
    let cpu = std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })?
        })
        .unwrap_or(0);
    Resources {
        cpu,
        memory: Memory::from_bytes(kib * 1024),
    }
}

/// What the agent reports about its host.
pub struct HostReport {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub reserve: Resources,
    pub allocated: Resources,
    pub endpoint: String,
    pub accel: String,
}

/// Creates the Host if missing and writes its status.
pub async fn report(client: &kube::Client, r: &HostReport) -> kube::Result<()> {
    let api: Api<Host> = Api::all(client.clone());
    if api.get_opt(&r.name).await?.is_none() {
        let host = Host::new(&r.name, HostSpec::default());
        match api.create(&PostParams::default(), &host).await {
            Ok(_) => tracing::info!(host = %r.name, "registered host"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let cap = capacity();
    let allocatable = Resources {
        cpu: cap.cpu.saturating_sub(r.reserve.cpu),
        memory: cap.memory.saturating_sub(r.reserve.memory),
    };
    let status = HostStatus {
        phase: Some(HostPhase::Ready),
        conditions: Vec::new(),
        capacity: Some(cap),
        allocatable: Some(allocatable),
        allocated: Some(r.allocated.clone()),
        underlay_ip: Some(r.underlay.to_string()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        last_heartbeat: Some(Time(Timestamp::now())),
        agent_endpoint: Some(r.endpoint.clone()),
        accelerator: Some(r.accel.clone()),
        // The BMC controller's; a merge keeps it.
        power_state: None,
        // The BMC controller's and the netboot services'.
        provisioning: None,
    };
    api.patch_status(
        &r.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Renews (or takes) the host's lease.
pub async fn renew_lease(
    client: &kube::Client,
    name: &str,
    lease_seconds: i32,
) -> kube::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), paddock_api::host::SYSTEM_NAMESPACE);
    let lease_name = paddock_api::host::lease_name(name);
    let now = MicroTime(Timestamp::now());
    let spec = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": lease_seconds, "renewTime": now}});
    match api
        .patch(&lease_name, &PatchParams::default(), &Patch::Merge(&spec))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let mut lease: Lease = serde_json::from_value(spec).map_err(kube::Error::SerdeError)?;
            lease.metadata.name = Some(lease_name);
            lease.spec.get_or_insert_default().acquire_time = Some(now);
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Err(e) => Err(e),
    }
}
