//! Paddock's Prometheus metrics, on `prometheus-client`.
//!
//! One process-wide set of families ([`global`]) that the API server, the
//! store, the controllers, the scheduler, the gateway and the agent record
//! into as they work; each family is named `paddock_<part>_…` and carries
//! only bounded labels (verbs, resources, codes, controllers, clusters,
//! VM states). What describes the fleet as a whole (hosts, their capacity
//! and allocation, Machines and Clusters by phase, certificates) is not
//! recorded here but read from the server's objects when scraped: see
//! [`Fleet`]. [`encode`] writes both in the OpenMetrics text format that
//! Prometheus scrapes.

use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod fleet;

pub use fleet::{CertificateExpiry, ClusterState, Fleet, HostState, MachineState};

/// The media type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

/// Labels of an API request's duration (no code: one histogram per route).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub verb: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `<organization>/<cluster>`.
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub cluster: String,
    /// `in` (client to cluster) or `out`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// The management API's requests and watches.
#[derive(Debug)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub watches: Family<ResourceLabels, Gauge>,
}

/// The store's writes as the API server sees them.
#[derive(Debug)]
pub struct StoreMetrics {
    pub commit: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<OpLabels, Counter>,
}

/// The controllers' reconciles.
#[derive(Debug)]
pub struct ControllerMetrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub queue_depth: Family<ControllerLabels, Gauge>,
}

/// The scheduler's placements.
#[derive(Debug, Default)]
pub struct SchedulerMetrics {
    pub placements: Counter,
    pub failures: Family<ReasonLabels, Counter>,
}

/// The gateway's connections and bytes, per cluster.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pub connections: Family<ClusterLabels, Counter>,
    pub open: Family<ClusterLabels, Gauge>,
    pub bytes: Family<TrafficLabels, Counter>,
}

/// A host agent's VMs.
#[derive(Debug)]
pub struct AgentMetrics {
    pub vms: Family<StateLabels, Gauge>,
    pub boot: Histogram,
    pub reconciles: Family<ReasonLabels, Counter>,
}

/// Every family of this process, registered.
#[derive(Debug)]
pub struct Metrics {
    pub api: ApiMetrics,
    pub store: StoreMetrics,
    pub controllers: ControllerMetrics,
    pub scheduler: SchedulerMetrics,
    pub gateway: GatewayMetrics,
    pub agent: AgentMetrics,
    registry: Registry,
}

/// Request latencies: 1 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Store commits: 100 µs to about 3 s.
fn commit() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            api: ApiMetrics {
                requests: Family::default(),
                duration: Family::new_with_constructor(latency),
                watches: Family::default(),
            },
            store: StoreMetrics {
                commit: Family::new_with_constructor(commit),
                errors: Family::default(),
            },
            controllers: ControllerMetrics {
                reconciles: Family::default(),
                duration: Family::new_with_constructor(latency),
                queue_depth: Family::default(),
            },
            scheduler: SchedulerMetrics::default(),
            gateway: GatewayMetrics::default(),
            agent: AgentMetrics {
                vms: Family::default(),
                // 0.5 s to about 17 min: KVM boots in seconds, TCG in minutes.
                boot: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
                reconciles: Family::default(),
            },
            registry: Registry::default(),
        };
        let mut r = Registry::with_prefix("paddock");
        r.register(
            "apiserver_requests",
            "API requests by verb, resource and HTTP status code",
            m.api.requests.clone(),
        );
        r.register(
            "apiserver_request_duration_seconds",
            "API request latency by verb and resource (watches excluded)",
            m.api.duration.clone(),
        );
        r.register(
            "apiserver_watches_open",
            "Watches open, by resource",
            m.api.watches.clone(),
        );
        r.register(
            "store_commit_duration_seconds",
            "Latency of the store's committed writes (op: put, delete)",
            m.store.commit.clone(),
        );
        r.register(
            "store_commit_errors",
            "Store writes that failed for a reason other than a precondition",
            m.store.errors.clone(),
        );
        r.register(
            "controller_reconciles",
            "Reconciles by controller and result (ok, error)",
            m.controllers.reconciles.clone(),
        );
        r.register(
            "controller_reconcile_duration_seconds",
            "Reconcile duration by controller",
            m.controllers.duration.clone(),
        );
        r.register(
            "controller_queue_depth",
            "Objects waiting for a controller",
            m.controllers.queue_depth.clone(),
        );
        r.register(
            "scheduler_placements",
            "Machines bound to a host",
            m.scheduler.placements.clone(),
        );
        r.register(
            "scheduler_failures",
            "Machines the scheduler could not place, by reason",
            m.scheduler.failures.clone(),
        );
        r.register(
            "gateway_connections",
            "Connections the gateway routed, per cluster",
            m.gateway.connections.clone(),
        );
        r.register(
            "gateway_connections_open",
            "Connections open through the gateway, per cluster",
            m.gateway.open.clone(),
        );
        r.register(
            "gateway_bytes",
            "Bytes the gateway carried, per cluster and direction",
            m.gateway.bytes.clone(),
        );
        r.register("agent_vms", "This host's VMs by state", m.agent.vms.clone());
        r.register(
            "agent_vm_boot_seconds",
            "From a VM's start to its guest agent answering",
            m.agent.boot.clone(),
        );
        r.register(
            "agent_passes",
            "The agent's passes over its VMs, by result (reason: ok, error)",
            m.agent.reconciles.clone(),
        );
        Self { registry: r, ..m }
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Times a piece of work into a histogram.
pub fn observe(h: &Histogram, took: Duration) {
    h.observe(took.as_secs_f64());
}

/// Counts one reconcile of `controller` that took `took`.
pub fn reconciled(controller: &str, ok: bool, took: Duration) {
    let c = &global().controllers;
    c.reconciles
        .get_or_create(&ReconcileLabels {
            controller: controller.to_owned(),
            result: if ok { "ok" } else { "error" }.to_owned(),
        })
        .inc();
    observe(
        &c.duration.get_or_create(&ControllerLabels {
            controller: controller.to_owned(),
        }),
        took,
    );
}

/// Sets how many objects wait for `controller`.
pub fn queue_depth(controller: &str, depth: usize) {
    global()
        .controllers
        .queue_depth
        .get_or_create(&ControllerLabels {
            controller: controller.to_owned(),
        })
        .set(i64::try_from(depth).unwrap_or(i64::MAX));
}

/// Counts a Machine the scheduler could not place, by `reason`.
pub fn scheduling_failed(reason: &str) {
    global()
        .scheduler
        .failures
        .get_or_create(&ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
}

/// Counts one pass of the agent over its VMs.
pub fn agent_pass(ok: bool) {
    global()
        .agent
        .reconciles
        .get_or_create(&ReasonLabels {
            reason: if ok { "ok" } else { "error" }.to_owned(),
        })
        .inc();
}

/// Sets the agent's VMs by state (every known state, 0 when none).
pub fn agent_vms<'a>(phases: impl Iterator<Item = &'a str>) {
    let mut counts: std::collections::BTreeMap<&str, i64> = [
        "Pending",
        "Scheduled",
        "Starting",
        "Running",
        "Failed",
        "Stopping",
    ]
    .into_iter()
    .map(|p| (p, 0))
    .collect();
    for p in phases {
        *counts.entry(p).or_default() += 1;
    }
    for (state, n) in counts {
        global()
            .agent
            .vms
            .get_or_create(&StateLabels {
                state: state.to_owned(),
            })
            .set(n);
    }
}

/// Adds `delta` to the open watches of `resource`.
pub fn watches_open(resource: &str, delta: i64) {
    global()
        .api
        .watches
        .get_or_create(&ResourceLabels {
            resource: resource.to_owned(),
        })
        .inc_by(delta);
}

/// This process's metrics, and `fleet`'s when given, in the OpenMetrics
/// text format.
pub fn encode(fleet: Option<&Fleet>) -> String {
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &global().registry);
    if let Some(f) = fleet
        && let Ok(r) = f.registry.read()
    {
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &r);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// A registry of one's own (the fleet's, a test's).
pub(crate) fn registry() -> RwLock<Registry> {
    RwLock::new(Registry::with_prefix("paddock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_encoded_once_with_eof_last() {
        reconciled("unit-test", true, Duration::from_millis(3));
        reconciled("unit-test", false, Duration::from_millis(3));
        queue_depth("unit-test", 7);
        let text = encode(None);
        assert!(text.contains(
            "paddock_controller_reconciles_total{controller=\"unit-test\",result=\"ok\"} 1"
        ));
        assert!(text.contains("paddock_controller_queue_depth{controller=\"unit-test\"} 7"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
