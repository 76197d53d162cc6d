//! Host health: a host whose Lease has expired turns NotReady; after a
//! grace period its Machines are deleted, and the cluster controller's
//! replacements are scheduled on other hosts. (Fencing through the BMC
//! before that is a later step.)

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use paddock_api::{Host, HostPhase, Machine};
use serde_json::json;

use crate::Config;

fn lease_fresh(l: Option<&Lease>, now: Timestamp) -> bool {
    let Some(spec) = l.and_then(|l| l.spec.as_ref()) else {
        return false;
    };
    let Some(renew) = spec.renew_time.as_ref() else {
        return false;
    };
    let dur = i64::from(spec.lease_duration_seconds.unwrap_or(40));
    renew.0.as_second() + dur >= now.as_second()
}

pub async fn pass(client: &kube::Client, cfg: &Config) -> anyhow::Result<()> {
    let hosts: Api<Host> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), paddock_api::host::SYSTEM_NAMESPACE);
    let leases = leases.list(&ListParams::default()).await?.items;
    let now = Timestamp::now();
    for h in hosts.list(&ListParams::default()).await?.items {
        let name = h.name_any();
        let lease = leases
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(&paddock_api::host::lease_name(&name)));
        let fresh = lease_fresh(lease, now);
        let st = h.status.clone().unwrap_or_default();
        let ready_cond = st.conditions.iter().find(|c| c.type_ == "Ready");
        if !fresh && st.phase == Some(HostPhase::Ready) {
            tracing::warn!(host = %name, "lease expired; host NotReady");
            let c = Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "LeaseExpired".into(),
                message: "the agent stopped renewing its lease".into(),
                last_transition_time: Time(now),
                observed_generation: None,
            };
            hosts
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "NotReady", "conditions": [c]}})),
                )
                .await?;
            crate::events::record(
                client,
                &h,
                true,
                "NodeNotReady",
                format!("host {name} stopped heartbeating"),
            )
            .await;
            continue;
        }
        if fresh && st.phase == Some(HostPhase::NotReady) {
            // The agent is back; its next report sets Ready.
            continue;
        }
        let since = ready_cond
            .filter(|c| c.status == "False")
            .map(|c| c.last_transition_time.0);
        if st.phase == Some(HostPhase::NotReady)
            && since
                .is_some_and(|s| now.as_second() - s.as_second() >= cfg.host_grace.as_secs() as i64)
        {
            let machines: Api<Machine> = Api::all(client.clone());
            for m in machines
                .list(&ListParams::default().fields(&format!("spec.hostName={name}")))
                .await?
                .items
            {
                if m.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let api: Api<Machine> =
                    Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
                tracing::warn!(host = %name, machine = %m.name_any(), "replacing a machine of a NotReady host");
                crate::events::record(
                    client,
                    &m,
                    true,
                    "HostNotReady",
                    format!(
                        "host {name} NotReady for over {}s; replacing",
                        cfg.host_grace.as_secs()
                    ),
                )
                .await;
                match api.delete(&m.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    loop {
        if let Err(e) = pass(&client, &cfg).await {
            tracing::warn!(error = format!("{e:#}"), "host health pass failed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
