//! Host health: a host whose Lease has expired turns NotReady. After a
//! grace period, once it is fenced — powered off through its BMC and the
//! power-off confirmed (the BMC controller), or declared off by the
//! operator (`spec.outOfService`, `paddock host fence`) — its Machines are
//! deleted, and the cluster controller's replacements are scheduled on
//! other hosts. An unfenced host may still run its VMs, so no Machine of
//! it is replaced until then: no Machine runs twice. Meanwhile the host's
//! `Fenced` condition says what it waits for.
//!
//! A deleted Machine keeps its VM finalizer until the agent of its host has
//! stopped its VM. Where no agent ever will — the Machine never had a host,
//! or its Host was deleted, the operator's word that the machine is gone for
//! good — host health releases it. A host that is merely NotReady may still
//! run the VM, so its Machines stay held (and their cluster's overlay with
//! them) until it comes back or is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use paddock_api::machine::VM_FINALIZER;
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

/// How long a new Host that reports Ready may go without a Lease (an
/// agent's default lease duration).
const NEW_HOST_SECONDS: i64 = 40;

/// What to do about one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: Ready and heartbeating, or back and about to report Ready,
    /// or NotReady within its grace period.
    Nothing,
    /// Its lease expired: mark it NotReady.
    MarkNotReady,
    /// NotReady for longer than the grace period, and fenced: replace its
    /// Machines.
    Replace,
    /// NotReady for longer than the grace period, not fenced yet: say so.
    AwaitFence,
}

/// The verdict on host `h` with lease `lease` at `now`.
pub fn judge(h: &Host, lease: Option<&Lease>, now: Timestamp, grace: Duration) -> Verdict {
    let fresh = lease_fresh(lease, now);
    let st = h.status.clone().unwrap_or_default();
    // A new host may report Ready before its Lease is written, or before
    // the Lease's watch shows it: no Lease yet is not an expired one.
    let new = lease.is_none()
        && h.metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| now.as_second() - t.0.as_second() < NEW_HOST_SECONDS);
    match (st.phase, fresh) {
        (Some(HostPhase::Ready), false) if new => Verdict::Nothing,
        (Some(HostPhase::Ready), false) => Verdict::MarkNotReady,
        (Some(HostPhase::NotReady), false) => {
            let since = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
                .map(|c| c.last_transition_time.0);
            match since {
                Some(s) if now.as_second() - s.as_second() >= grace.as_secs() as i64 => {
                    if h.fenced() {
                        Verdict::Replace
                    } else {
                        Verdict::AwaitFence
                    }
                }
                _ => Verdict::Nothing,
            }
        }
        _ => Verdict::Nothing,
    }
}

/// Deleted Machines that hold the VM finalizer but that no agent will
/// release: never bound, bound to a Host that no longer exists, or to one
/// that is fenced (off: its VMs cannot run). `hosts` are the Hosts that
/// exist and are not fenced.
pub fn orphaned<'a, M: std::borrow::Borrow<Machine>>(
    machines: &'a [M],
    hosts: &HashSet<String>,
) -> Vec<&'a M> {
    machines
        .iter()
        .filter(|m| {
            let m: &Machine = (*m).borrow();
            m.metadata.deletion_timestamp.is_some()
                && m.finalizers().iter().any(|f| f == VM_FINALIZER)
                && m.spec.host_name.as_ref().is_none_or(|h| !hosts.contains(h))
        })
        .collect()
}

/// One pass over the world as the watches show it (no reads of the API:
/// its cost is the fleet in memory, not the fleet over the wire).
pub async fn pass(
    client: &kube::Client,
    cfg: &Config,
    hosts_now: &[Arc<Host>],
    leases: &[Arc<Lease>],
    machines: &[Arc<Machine>],
) -> anyhow::Result<()> {
    let leases: HashMap<&str, &Lease> = leases
        .iter()
        .filter_map(|l| Some((l.metadata.name.as_deref()?, &**l)))
        .collect();
    let now = Timestamp::now();
    // One host's or Machine's failure does not hold up the others: each
    // step is logged and the pass goes on.
    let mut failed = 0;
    let mut step = |what: String, r: anyhow::Result<()>| {
        if let Err(e) = r {
            failed += 1;
            tracing::warn!(error = format!("{e:#}"), "host health: {what} failed");
        }
    };
    for h in hosts_now {
        let name = h.name_any();
        let lease = leases
            .get(paddock_api::host::lease_name(&name).as_str())
            .copied();
        match judge(h, lease, now, cfg.host_grace) {
            Verdict::Nothing => {}
            Verdict::MarkNotReady => {
                step(
                    format!("marking {name} NotReady"),
                    mark_not_ready(client, h, now).await,
                );
            }
            Verdict::AwaitFence => {
                step(
                    format!("noting that {name} awaits fencing"),
                    await_fence(client, h, now).await,
                );
            }
            Verdict::Replace => {
                for m in machines.iter().filter(|m| {
                    m.spec.host_name.as_deref() == Some(name.as_str())
                        && m.metadata.deletion_timestamp.is_none()
                }) {
                    let why = format!(
                        "host {name} NotReady for over {}s and fenced; replacing",
                        cfg.host_grace.as_secs()
                    );
                    let r = replace(client, m, "HostNotReady", why).await;
                    step(format!("replacing {}", m.name_any()), r);
                }
            }
        }
    }
    let names: HashSet<String> = hosts_now.iter().map(|h| h.name_any()).collect();
    // Machines of a deleted Host: replaced, then (deleted) released below.
    for m in machines.iter().filter(|m| {
        m.metadata.deletion_timestamp.is_none()
            && m.spec
                .host_name
                .as_ref()
                .is_some_and(|h| !names.contains(h))
    }) {
        let why = format!(
            "host {} was deleted; replacing",
            m.spec.host_name.as_deref().unwrap_or_default()
        );
        let r = replace(client, m, "HostDeleted", why).await;
        step(format!("replacing {}", m.name_any()), r);
    }
    let unfenced: HashSet<String> = hosts_now
        .iter()
        .filter(|h| !h.fenced())
        .map(|h| h.name_any())
        .collect();
    for m in orphaned(machines, &unfenced) {
        step(
            format!("releasing {}", m.name_any()),
            release(client, m).await,
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} steps failed");
    }
    Ok(())
}

/// Writes `Fenced=False` saying what the host waits for, once.
async fn await_fence(client: &kube::Client, h: &Host, now: Timestamp) -> anyhow::Result<()> {
    use paddock_api::host::FENCED_CONDITION;
    let st = h.status.clone().unwrap_or_default();
    if st.conditions.iter().any(|c| c.type_ == FENCED_CONDITION) {
        return Ok(());
    }
    let name = h.name_any();
    let message = if h.spec.bmc.is_some() {
        format!(
            "its Machines are replaced once its BMC has powered it off (see {})",
            paddock_api::host::BMC_CONDITION
        )
    } else {
        format!(
            "it has no BMC: its Machines are replaced once the operator confirms it is off (paddock host fence {name})"
        )
    };
    tracing::warn!(host = %name, "NotReady and not fenced: {message}");
    let mut conditions = st.conditions.clone();
    conditions.push(Condition {
        type_: FENCED_CONDITION.into(),
        status: "False".into(),
        reason: "AwaitingFence".into(),
        message: message.clone(),
        last_transition_time: Time(now),
        observed_generation: None,
    });
    Api::<Host>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": h.resource_version()},
                "status": {"conditions": conditions},
            })),
        )
        .await?;
    crate::events::record(
        client,
        h,
        true,
        "AwaitingFence",
        format!("host {name}: {message}"),
    )
    .await;
    Ok(())
}

async fn mark_not_ready(client: &kube::Client, h: &Host, now: Timestamp) -> anyhow::Result<()> {
    let name = h.name_any();
    tracing::warn!(host = %name, "lease expired; host NotReady");
    let c = Condition {
        type_: "Ready".into(),
        status: "False".into(),
        reason: "LeaseExpired".into(),
        message: "the agent stopped renewing its lease".into(),
        last_transition_time: Time(now),
        observed_generation: None,
    };
    // Other writers' conditions (the BMC's) are kept; the resourceVersion
    // makes a concurrent write a conflict, tried again next pass.
    let mut conditions: Vec<Condition> = h
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ != "Ready")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    conditions.push(c);
    Api::<Host>::all(client.clone())
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": h.resource_version()},
                "status": {"phase": "NotReady", "conditions": conditions},
            })),
        )
        .await?;
    crate::events::record(
        client,
        h,
        true,
        "NodeNotReady",
        format!("host {name} stopped heartbeating"),
    )
    .await;
    Ok(())
}

async fn replace(
    client: &kube::Client,
    m: &Machine,
    reason: &str,
    why: String,
) -> anyhow::Result<()> {
    let api: Api<Machine> = Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
    tracing::warn!(machine = %m.name_any(), reason = %why, "replacing a machine");
    crate::events::record(client, m, true, reason, why).await;
    match api.delete(&m.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the VM finalizer of a Machine no agent will release, if it is
/// still as read (a bind in between makes it an agent's again).
async fn release(client: &kube::Client, m: &Machine) -> anyhow::Result<()> {
    let api: Api<Machine> = Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
    let why = match &m.spec.host_name {
        Some(h) => format!("its host {h} was deleted"),
        None => "it never had a host".to_owned(),
    };
    let patch = paddock_api::machine::release_patch(m);
    match api
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(machine = %m.name_any(), reason = %why, "released a deleted machine no agent holds");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    // Changes wake nothing here: the pass runs on the clock, since a lease
    // expires without any change to see.
    let quiet = Arc::new(tokio::sync::Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let hosts = watchers.store::<Host>(Api::all(client.clone()), quiet.clone());
    let leases = watchers.store::<Lease>(
        Api::namespaced(client.clone(), paddock_api::host::SYSTEM_NAMESPACE),
        quiet.clone(),
    );
    let machines = watchers.store::<Machine>(Api::all(client.clone()), quiet);
    let _ = hosts.wait_until_ready().await;
    let _ = leases.wait_until_ready().await;
    let _ = machines.wait_until_ready().await;
    loop {
        let started = std::time::Instant::now();
        let r = pass(
            &client,
            &cfg,
            &hosts.state(),
            &leases.state(),
            &machines.state(),
        )
        .await;
        paddock_metrics::reconciled("host-health", r.is_ok(), started.elapsed());
        if let Err(e) = r {
            tracing::warn!(error = format!("{e:#}"), "host health pass failed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use paddock_api::host::{HostSpec, HostStatus};
    use paddock_api::machine::MachineSpec;
    use paddock_api::{MachineRole, Memory};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("timestamp")
    }

    fn host(phase: HostPhase, not_ready_since: Option<i64>) -> Host {
        let mut h = Host::new("h1", HostSpec::default());
        h.status = Some(HostStatus {
            phase: Some(phase),
            conditions: not_ready_since
                .map(|s| Condition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: "LeaseExpired".into(),
                    message: String::new(),
                    last_transition_time: Time(at(s)),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        h
    }

    fn lease(renewed: i64, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_host_turns_not_ready_when_its_lease_runs_out_then_is_replaced_after_grace_once_fenced() {
        let grace = Duration::from_secs(60);
        let ready = host(HostPhase::Ready, None);
        assert_eq!(
            judge(&ready, Some(&lease(0, 40)), at(40), grace),
            Verdict::Nothing
        );
        assert_eq!(
            judge(&ready, Some(&lease(0, 40)), at(41), grace),
            Verdict::MarkNotReady
        );
        assert_eq!(judge(&ready, None, at(0), grace), Verdict::MarkNotReady);
        let down = host(HostPhase::NotReady, Some(41));
        assert_eq!(
            judge(&down, Some(&lease(0, 40)), at(100), grace),
            Verdict::Nothing
        );
        // Not fenced: nothing is replaced, whatever the time.
        for t in [101, 10_000] {
            assert_eq!(
                judge(&down, Some(&lease(0, 40)), at(t), grace),
                Verdict::AwaitFence
            );
        }
        // Fenced by the operator's word, or by the BMC: replaced.
        let mut declared = down.clone();
        declared.spec.out_of_service = true;
        assert_eq!(
            judge(&declared, Some(&lease(0, 40)), at(101), grace),
            Verdict::Replace
        );
        let mut powered_off = down.clone();
        if let Some(st) = powered_off.status.as_mut() {
            st.conditions.push(Condition {
                type_: paddock_api::host::FENCED_CONDITION.into(),
                status: "True".into(),
                reason: "PoweredOff".into(),
                message: String::new(),
                last_transition_time: Time(at(90)),
                observed_generation: None,
            });
        }
        assert_eq!(
            judge(&powered_off, Some(&lease(0, 40)), at(101), grace),
            Verdict::Replace
        );
        // Back: its next report sets Ready; nothing is replaced meanwhile.
        assert_eq!(
            judge(&down, Some(&lease(200, 40)), at(201), grace),
            Verdict::Nothing
        );
    }

    #[test]
    fn a_new_host_ready_before_its_lease_is_shown_is_not_marked_not_ready() {
        let grace = Duration::from_secs(60);
        let mut new = host(HostPhase::Ready, None);
        new.metadata.creation_timestamp = Some(Time(at(0)));
        assert_eq!(judge(&new, None, at(10), grace), Verdict::Nothing);
        // Still without one after a lease's length: marked.
        assert_eq!(judge(&new, None, at(41), grace), Verdict::MarkNotReady);
        // A Lease that exists and ran out is judged as ever.
        assert_eq!(
            judge(&new, Some(&lease(-100, 40)), at(10), grace),
            Verdict::MarkNotReady
        );
    }

    fn machine(name: &str, host: Option<&str>, deleting: bool, fin: bool) -> Machine {
        let mut m = Machine::new(
            name,
            MachineSpec {
                cluster_name: "demo".into(),
                role: MachineRole::Worker,
                pool: None,
                cpu: 1,
                memory: Memory::from_bytes(1 << 30),
                disk: Memory::from_bytes(1 << 30),
                image: None,
                host_name: host.map(str::to_owned),
                mac: None,
                ip: None,
                bootstrap_secret: None,
            },
        );
        if deleting {
            m.metadata.deletion_timestamp = Some(Time(at(0)));
        }
        if fin {
            m.metadata.finalizers = Some(vec![VM_FINALIZER.into()]);
        }
        m
    }

    #[test]
    fn only_machines_no_agent_will_release_are_orphans() {
        let hosts: HashSet<String> = ["h1".to_owned()].into();
        let ms = vec![
            machine("unbound", None, true, true),
            machine("host-deleted", Some("h9"), true, true),
            machine("host-there", Some("h1"), true, true),
            machine("not-deleting", Some("h9"), false, true),
            machine("released", Some("h9"), true, false),
        ];
        let names: Vec<String> = orphaned(&ms, &hosts).iter().map(|m| m.name_any()).collect();
        assert_eq!(names, ["unbound", "host-deleted"]);
    }
}
