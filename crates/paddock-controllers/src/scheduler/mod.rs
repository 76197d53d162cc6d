//! The scheduler: binds each unbound Machine to a Ready, schedulable Host
//! with room for its cpu and memory; spreads a cluster's control plane over
//! hosts (and racks); spreads or packs workers. A Machine that fits nowhere
//! stays Pending with a condition that says why.
//!
//! Its view of the fleet ([`Fleet`]) is kept current from the watches one
//! event at a time, and a placement reads its indexes: neither grows with
//! the fleet. Binds go out concurrently (at most [`BINDS_IN_FLIGHT`]) while
//! the next Machines are placed; each is one write that the API server
//! refuses for a Machine already bound, so no Machine is bound twice.

mod fleet;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use paddock_api::{Host, Machine};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

pub use fleet::{Fleet, Plan};

use crate::Config;

/// Binds sent and not yet answered, at most.
pub const BINDS_IN_FLIGHT: usize = 64;

fn scheduled_condition(m: &Machine, ok: bool, reason: &str, message: String) -> Condition {
    let status = if ok { "True" } else { "False" };
    let prev = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Scheduled"));
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: "Scheduled".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: m.metadata.generation,
    }
}

/// The Machine's conditions with `c` put in place of its type.
fn with_condition(m: &Machine, c: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = m
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    out.retain(|x| x.type_ != c.type_);
    out.push(c);
    out
}

/// Binds `m` to `host` in one write: the host, the Scheduled condition and
/// the phase, refused if the Machine is bound already. True if bound.
async fn bind(client: &kube::Client, m: &Machine, host: &str) -> bool {
    let url = format!(
        "/apis/{}/{}/namespaces/{}/machines/{}/binding",
        paddock_api::GROUP,
        paddock_api::VERSION,
        m.namespace().unwrap_or_default(),
        m.name_any()
    );
    let body = json!({"target": {"name": host}});
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default());
    let r = match req {
        Ok(req) => client.request::<Machine>(req).await.map(|_| ()),
        Err(e) => Err(kube::Error::HttpError(e)),
    };
    match r {
        Ok(()) => {
            tracing::debug!(machine = %m.name_any(), %host, "bound");
            paddock_metrics::global().scheduler.placements.inc();
            true
        }
        Err(e) => {
            paddock_metrics::scheduling_failed("bind-conflict");
            tracing::debug!(machine = %m.name_any(), error = %e, "bind lost a race; next pass");
            false
        }
    }
}

/// Records why `m` has no host, unless its condition says so already.
async fn unschedulable(client: &kube::Client, m: &Machine, why: String) {
    let same = m.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|x| x.type_ == "Scheduled" && x.message == why)
    });
    if same {
        return;
    }
    tracing::info!(machine = %m.name_any(), reason = %why, "unschedulable");
    paddock_metrics::scheduling_failed("unschedulable");
    let api: Api<Machine> = Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
    let c = scheduled_condition(m, false, "Unschedulable", why.clone());
    let st = json!({"status": {"conditions": with_condition(m, c), "phase": "Pending"}});
    let _ = api
        .patch_status(&m.name_any(), &PatchParams::default(), &Patch::Merge(&st))
        .await;
    crate::events::record(client, m, true, "FailedScheduling", why).await;
}

fn lock(fleet: &Mutex<Fleet>) -> std::sync::MutexGuard<'_, Fleet> {
    // Every change to the fleet is made whole under the lock.
    fleet.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `fleet` current from a watch of `K`, poking `notify` on each
/// change; `ready` is sent once the first list is in.
async fn follow<K: paddock_watch::Watchable>(
    api: Api<K>,
    fleet: Arc<Mutex<Fleet>>,
    notify: Arc<Notify>,
    ready: tokio::sync::oneshot::Sender<()>,
    apply: fn(&mut Fleet, Change<K>),
) {
    let mut ready = Some(ready);
    let mut listed = Vec::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .modify(paddock_watch::lean::<K>)
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "scheduler watch error; retrying");
                continue;
            }
        };
        match ev {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(k) => listed.push(Arc::new(k)),
            watcher::Event::InitDone => {
                apply(&mut lock(&fleet), Change::All(std::mem::take(&mut listed)));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(k) => apply(&mut lock(&fleet), Change::Applied(Arc::new(k))),
            watcher::Event::Delete(k) => apply(&mut lock(&fleet), Change::Deleted(Arc::new(k))),
        }
        notify.notify_one();
    }
}

/// One watch event, as the fleet takes it.
enum Change<K> {
    All(Vec<Arc<K>>),
    Applied(Arc<K>),
    Deleted(Arc<K>),
}

fn host_change(f: &mut Fleet, c: Change<Host>) {
    match c {
        Change::All(hosts) => f.reset_hosts(hosts.iter().map(|h| &**h)),
        Change::Applied(h) => f.host_applied(&h),
        Change::Deleted(h) => f.host_deleted(&h.name_any()),
    }
}

fn machine_change(f: &mut Fleet, c: Change<Machine>) {
    match c {
        Change::All(machines) => f.reset_machines(machines),
        Change::Applied(m) => f.machine_applied(m),
        Change::Deleted(m) => f.machine_deleted(&m),
    }
}

pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    let fleet = Arc::new(Mutex::new(Fleet::new(&cfg)));
    let notify = Arc::new(Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let (hosts_tx, hosts_rx) = tokio::sync::oneshot::channel();
    let (machines_tx, machines_rx) = tokio::sync::oneshot::channel();
    watchers.keep(tokio::spawn(follow(
        Api::<Host>::all(client.clone()),
        fleet.clone(),
        notify.clone(),
        hosts_tx,
        host_change,
    )));
    watchers.keep(tokio::spawn(follow(
        Api::<Machine>::all(client.clone()),
        fleet.clone(),
        notify.clone(),
        machines_tx,
        machine_change,
    )));
    // Never place against a fleet not yet read.
    if hosts_rx.await.is_err() || machines_rx.await.is_err() {
        tracing::error!("scheduler watches ended before their first list");
        return;
    }
    let in_flight = Arc::new(Semaphore::new(BINDS_IN_FLIGHT));
    // Binds still out; aborted with the scheduler.
    let mut binds = JoinSet::new();
    loop {
        while binds.try_join_next().is_some() {}
        let started = std::time::Instant::now();
        let plans = lock(&fleet).plan();
        paddock_metrics::queue_depth("scheduler", plans.len());
        let mut refusals = Vec::new();
        for (m, plan) in plans {
            match plan {
                Ok(host) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, fleet) = (client.clone(), fleet.clone());
                    binds.spawn(async move {
                        if !bind(&client, &m, &host).await
                            && let Some(uid) = m.uid()
                        {
                            lock(&fleet).bind_failed(&uid);
                        }
                        drop(permit);
                    });
                }
                Err(why) => refusals.push((m, why)),
            }
        }
        futures::stream::iter(refusals)
            .for_each_concurrent(32, |(m, why)| {
                let client = &client;
                async move { unschedulable(client, &m, why).await }
            })
            .await;
        paddock_metrics::reconciled("scheduler", true, started.elapsed());
        tokio::select! {
            _ = notify.notified() => tokio::time::sleep(Duration::from_millis(10)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
