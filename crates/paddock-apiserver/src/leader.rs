//! Leader election for the loops that must run once in the whole
//! management plane (controllers, scheduler, host health, garbage
//! collection), when several servers share one etcd.
//!
//! The election is a `coordination.k8s.io` Lease, `paddock-system/
//! paddock-controllers`, taken and renewed as Kubernetes components take
//! theirs: a candidate takes it over once it has seen it unchanged for a
//! lease's length. Timing alone cannot stop a leader that was frozen (a
//! stopped process, a long pause) from writing after its successor
//! started, so each term is also a **fence**: on taking the Lease, the new
//! leader rewrites the store key [`TERM_KEY`], and every write of the
//! leader's loops is a store transaction that holds only while that key is
//! at the revision its own term wrote. A deposed leader's writes fail in
//! the store, not by hope.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use paddock_store::{Fence, Precondition};
use tokio::sync::watch;

use crate::Api;

/// The Lease of the election.
pub const LEASE_NAMESPACE: &str = "paddock-system";
pub const LEASE_NAME: &str = "paddock-controllers";
/// The store key each new term rewrites; outside `/registry/`, so no API
/// reads or serves it.
pub const TERM_KEY: &str = "/leader/paddock-controllers";

/// How a server takes part in the election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// This server's name in the Lease (unique per process).
    pub identity: String,
    /// How long a Lease seen unchanged stays the holder's.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (shorter
    /// than the lease, so it stops before anyone may take over).
    pub renew_deadline: Duration,
    /// How often candidates look and the leader renews.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// The default timings: a 6 s lease.
    pub fn new(identity: String) -> Self {
        Self::with_lease(identity, Duration::from_secs(6))
    }

    /// Timings for a lease of `lease`: a leader steps down after two
    /// thirds of it without renewing, and looks six times per lease.
    pub fn with_lease(identity: String, lease: Duration) -> Self {
        Self {
            identity,
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry_period: (lease / 6).max(Duration::from_millis(200)),
        }
    }
}

/// One leader's term: who holds it, which transition of the Lease it is,
/// and the fence its writes carry (none when this server is the only one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub holder: String,
    pub transitions: i32,
    pub fence: Option<Fence>,
}

/// Whether this server leads now, shared by the election and what it gates.
#[derive(Clone)]
pub struct Leadership(Arc<watch::Sender<Option<Term>>>);

impl Leadership {
    /// The only server there can be (the embedded store locks its file):
    /// it leads from the start, unfenced.
    pub fn sole() -> Self {
        Self(Arc::new(watch::Sender::new(Some(Term {
            holder: "sole".into(),
            transitions: 0,
            fence: None,
        }))))
    }

    /// A candidate: leads once [`elect`] wins the Lease.
    pub fn candidate() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }

    pub fn current(&self) -> Option<Term> {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Term>> {
        self.0.subscribe()
    }

    fn set(&self, term: Option<Term>) {
        self.0.send_if_modified(|t| {
            if *t == term {
                return false;
            }
            match (&*t, &term) {
                (_, Some(n)) => {
                    tracing::info!(holder = n.holder, transitions = n.transitions, "leading")
                }
                (Some(o), None) => {
                    tracing::warn!(holder = o.holder, "no longer leading")
                }
                (None, None) => {}
            }
            *t = term;
            true
        });
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn lease_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// What the candidate last saw of the Lease and when it saw it change.
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// Takes part in the election for as long as it runs: takes the Lease when
/// it is free or its holder has let it lapse, renews it while leading,
/// steps down when it cannot renew within the deadline or sees another
/// holder. `client` writes the Lease (unfenced); `api` writes the term key.
pub async fn elect(api: Api, client: kube::Client, cfg: ElectionConfig, leadership: Leadership) {
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, LEASE_NAMESPACE);
    let mut observed = Observed {
        resource_version: None,
        at: Instant::now(),
    };
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(cfg.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leading = leadership.current();
        match step(&api, &leases, &cfg, &mut observed, leading.as_ref()).await {
            Ok(Some(term)) => {
                renewed = Instant::now();
                leadership.set(Some(term));
            }
            Ok(None) => leadership.set(None),
            Err(e) => {
                tracing::debug!(error = %e, "leader election step failed");
                if leading.is_some() && renewed.elapsed() > cfg.renew_deadline {
                    tracing::warn!(
                        deadline = ?cfg.renew_deadline,
                        "could not renew the leader lease in time; stepping down"
                    );
                    leadership.set(None);
                }
            }
        }
    }
}

/// One look at the Lease. `Ok(Some)`: this server leads (renewed or
/// taken); `Ok(None)`: another does; `Err`: it could not tell.
async fn step(
    api: &Api,
    leases: &kube::Api<Lease>,
    cfg: &ElectionConfig,
    observed: &mut Observed,
    leading: Option<&Term>,
) -> Result<Option<Term>, String> {
    let current = leases
        .get_opt(LEASE_NAME)
        .await
        .map_err(|e| e.to_string())?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some(LEASE_NAMESPACE.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(lease_seconds(cfg.lease_duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        leases
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| e.to_string())?;
        return begin_term(api, &cfg.identity, 0).await.map(Some);
    };
    if lease.metadata.resource_version != observed.resource_version {
        observed
            .resource_version
            .clone_from(&lease.metadata.resource_version);
        observed.at = Instant::now();
    }
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == cfg.identity
        && let Some(term) = leading.filter(|t| t.transitions == transitions)
    {
        spec.renew_time = Some(now());
        let name = LEASE_NAME;
        let renewed = leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .map_err(|e| e.to_string())?;
        observed.resource_version = renewed.metadata.resource_version;
        observed.at = Instant::now();
        return Ok(Some(term.clone()));
    }
    let lapsed = holder.is_empty() || observed.at.elapsed() > cfg.lease_duration;
    if holder != cfg.identity && !lapsed {
        return Ok(None);
    }
    // Free, lapsed, or ours from a term this process no longer leads: a new term.
    let transitions = transitions.saturating_add(1);
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(lease_seconds(cfg.lease_duration));
    spec.acquire_time = Some(now());
    spec.renew_time = Some(now());
    spec.lease_transitions = Some(transitions);
    let taken = leases
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
        .map_err(|e| e.to_string())?;
    observed.resource_version = taken.metadata.resource_version;
    observed.at = Instant::now();
    tracing::info!(previous = holder, transitions, "took the leader lease");
    begin_term(api, &cfg.identity, transitions).await.map(Some)
}

/// Writes the term key: from its new revision on, writes fenced by any
/// earlier term fail.
async fn begin_term(api: &Api, identity: &str, transitions: i32) -> Result<Term, String> {
    let value = serde_json::json!({"holder": identity, "transitions": transitions}).to_string();
    let kv = api
        .store
        .put(TERM_KEY, value.into(), Precondition::None)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    Ok(Term {
        holder: identity.to_owned(),
        transitions,
        fence: Some(Fence {
            key: TERM_KEY.into(),
            mod_revision: kv.mod_revision,
        }),
    })
}

/// A loop that runs on the leader only.
pub type LeaderLoop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the loop `make` gives for each term this server leads, and stops
/// it (dropped at its next await) as soon as the term ends. A loop that
/// ends by itself is logged and started again.
pub async fn while_leader<F>(leadership: Leadership, name: &'static str, make: F)
where
    F: Fn(&Term) -> LeaderLoop + Send + 'static,
{
    let mut rx = leadership.subscribe();
    loop {
        let term = loop {
            if let Some(t) = rx.borrow_and_update().clone() {
                break t;
            }
            if rx.changed().await.is_err() {
                return;
            }
        };
        let mut running = make(&term);
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() || rx.borrow().as_ref() != Some(&term) {
                        tracing::info!(task = name, transitions = term.transitions, "stopped: the term ended");
                        break;
                    }
                }
                () = &mut running => {
                    tracing::error!(task = name, "a leader's loop ended; starting it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
