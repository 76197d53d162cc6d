//! What the fleet looks like, as gauges read from the server's objects:
//! hosts (ready, capacity, allocatable, allocated, VMs), Machines and
//! Clusters by phase, certificates' expiry, and whether this server leads.
//! The server refreshes them from its watch cache ([`Fleet::update`]);
//! series of objects that are gone are removed, not left at their last
//! value.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostResourceLabels {
    host: String,
    /// `capacity`, `allocatable` or `allocated`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    namespace: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterPhaseLabels {
    namespace: String,
    cluster: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

/// One host as the fleet gauges show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    pub name: String,
    pub ready: bool,
    pub schedulable: bool,
    pub cpu_capacity: i64,
    pub cpu_allocatable: i64,
    pub cpu_allocated: i64,
    pub memory_capacity: i64,
    pub memory_allocatable: i64,
    pub memory_allocated: i64,
    /// Machines bound to it.
    pub vms: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineState {
    pub namespace: String,
    pub cluster: String,
    pub name: String,
    pub phase: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CertificateExpiry {
    /// `apiserver`, `ca`, or `cluster/<org>/<name>` for a cluster's CA.
    pub name: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// A gauge family and the label sets it held at the last update.
#[derive(Debug)]
struct Tracked<L> {
    family: Family<L, Gauge>,
    held: Mutex<HashSet<L>>,
}

impl<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> Tracked<L> {
    fn new(r: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<L, Gauge>::default();
        r.register(name, help, family.clone());
        Self {
            family,
            held: Mutex::default(),
        }
    }

    /// Sets every series given and removes those no longer there.
    fn set(&self, values: impl IntoIterator<Item = (L, i64)>) {
        let mut now = HashSet::new();
        for (l, v) in values {
            self.family.get_or_create(&l).set(v);
            now.insert(l);
        }
        if let Ok(mut held) = self.held.lock() {
            for gone in held.difference(&now) {
                self.family.remove(gone);
            }
            *held = now;
        }
    }
}

/// The fleet's gauges, with a registry of their own (one per server).
#[derive(Debug)]
pub struct Fleet {
    pub(crate) registry: RwLock<Registry>,
    host_ready: Tracked<HostLabels>,
    host_schedulable: Tracked<HostLabels>,
    host_cpu: Tracked<HostResourceLabels>,
    host_memory: Tracked<HostResourceLabels>,
    host_vms: Tracked<HostLabels>,
    machines: Tracked<PhaseLabels>,
    machine_running: Tracked<MachineLabels>,
    clusters: Tracked<PhaseLabels>,
    cluster_phase: Tracked<ClusterPhaseLabels>,
    certificates: Tracked<CertificateLabels>,
    leader: Gauge,
    refreshed: Gauge,
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts by phase, every known phase present (0 when none).
fn by_phase<'a>(known: &[&str], phases: impl Iterator<Item = &'a str>) -> Vec<(PhaseLabels, i64)> {
    let mut counts: std::collections::BTreeMap<String, i64> =
        known.iter().map(|p| ((*p).to_owned(), 0)).collect();
    for p in phases {
        *counts.entry(p.to_owned()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(phase, n)| (PhaseLabels { phase }, n))
        .collect()
}

impl Fleet {
    pub fn new() -> Self {
        let lock = registry();
        let mut guard = match lock.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let r = &mut *guard;
        let host_ready = Tracked::new(
            r,
            "host_ready",
            "1 when the host is Ready (its agent's lease is held), else 0",
        );
        let host_schedulable = Tracked::new(
            r,
            "host_schedulable",
            "1 when new Machines may be placed on the host (not cordoned)",
        );
        let host_cpu = Tracked::new(
            r,
            "host_cpu",
            "The host's vCPUs: capacity, allocatable (after overcommit) and allocated to Machines",
        );
        let host_memory = Tracked::new(
            r,
            "host_memory_bytes",
            "The host's memory: capacity, allocatable and allocated to Machines",
        );
        let host_vms = Tracked::new(r, "host_vms", "Machines bound to the host");
        let machines = Tracked::new(r, "machines", "Machines by phase");
        // Per cluster, not per Machine: at 100,000 Machines a series each
        // would cost the server and Prometheus for little.
        let machine_running = Tracked::new(
            r,
            "cluster_machines_not_running",
            "Machines of the cluster whose VM does not run (any phase but Running)",
        );
        let clusters = Tracked::new(r, "clusters", "Clusters by phase");
        let cluster_phase = Tracked::new(r, "cluster_phase", "1 for each cluster's current phase");
        let certificates = Tracked::new(
            r,
            "certificate_expiry_timestamp_seconds",
            "When a certificate expires (Unix time): the API server's, the platform CA, each cluster's CA",
        );
        let leader = Gauge::default();
        r.register(
            "leader",
            "1 when this server leads (runs the controllers and the gateway)",
            leader.clone(),
        );
        let refreshed = Gauge::default();
        r.register(
            "fleet_refreshed_timestamp_seconds",
            "When these fleet gauges were last read from the server's objects (Unix time)",
            refreshed.clone(),
        );
        drop(guard);
        Self {
            registry: lock,
            host_ready,
            host_schedulable,
            host_cpu,
            host_memory,
            host_vms,
            machines,
            machine_running,
            clusters,
            cluster_phase,
            certificates,
            leader,
            refreshed,
        }
    }

    /// Replaces every gauge with what the objects say now.
    pub fn update(
        &self,
        hosts: &[HostState],
        machines: &[MachineState],
        clusters: &[ClusterState],
        certificates: &[CertificateExpiry],
        now_unix: i64,
    ) {
        let host = |h: &HostState| HostLabels {
            host: h.name.clone(),
        };
        self.host_ready
            .set(hosts.iter().map(|h| (host(h), i64::from(h.ready))));
        self.host_schedulable
            .set(hosts.iter().map(|h| (host(h), i64::from(h.schedulable))));
        self.host_vms.set(hosts.iter().map(|h| (host(h), h.vms)));
        let kinds = |h: &HostState, v: [i64; 3]| {
            ["capacity", "allocatable", "allocated"]
                .into_iter()
                .zip(v)
                .map(|(k, v)| {
                    (
                        HostResourceLabels {
                            host: h.name.clone(),
                            kind: k.to_owned(),
                        },
                        v,
                    )
                })
                .collect::<Vec<_>>()
        };
        self.host_cpu.set(
            hosts
                .iter()
                .flat_map(|h| kinds(h, [h.cpu_capacity, h.cpu_allocatable, h.cpu_allocated])),
        );
        self.host_memory.set(hosts.iter().flat_map(|h| {
            kinds(
                h,
                [h.memory_capacity, h.memory_allocatable, h.memory_allocated],
            )
        }));
        self.machines.set(by_phase(
            &[
                "Pending",
                "Scheduled",
                "Starting",
                "Running",
                "Failed",
                "Stopping",
            ],
            machines.iter().map(|m| m.phase.as_str()),
        ));
        let mut not_running: std::collections::HashMap<MachineLabels, i64> =
            std::collections::HashMap::new();
        for m in machines {
            *not_running
                .entry(MachineLabels {
                    namespace: m.namespace.clone(),
                    cluster: m.cluster.clone(),
                })
                .or_default() += i64::from(m.phase != "Running");
        }
        self.machine_running.set(not_running);
        self.clusters.set(by_phase(
            &["Pending", "Provisioning", "Ready", "Degraded", "Deleting"],
            clusters.iter().map(|c| c.phase.as_str()),
        ));
        self.cluster_phase.set(clusters.iter().map(|c| {
            (
                ClusterPhaseLabels {
                    namespace: c.namespace.clone(),
                    cluster: c.name.clone(),
                    phase: c.phase.clone(),
                },
                1,
            )
        }));
        self.certificates.set(certificates.iter().map(|c| {
            (
                CertificateLabels {
                    certificate: c.name.clone(),
                },
                c.not_after,
            )
        }));
        self.refreshed.set(now_unix);
    }

    /// Whether this server leads.
    pub fn set_leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, ready: bool) -> HostState {
        HostState {
            name: name.into(),
            ready,
            schedulable: true,
            cpu_capacity: 8,
            cpu_allocatable: 32,
            cpu_allocated: 30,
            memory_capacity: 1 << 34,
            memory_allocatable: 1 << 34,
            memory_allocated: 1 << 30,
            vms: 3,
        }
    }

    #[test]
    fn gone_objects_lose_their_series() {
        let f = Fleet::new();
        let cluster = |n: &str, p: &str| ClusterState {
            namespace: "acme".into(),
            name: n.into(),
            phase: p.into(),
        };
        f.update(
            &[host("h1", true), host("h2", false)],
            &[],
            &[cluster("web", "Provisioning")],
            &[],
            100,
        );
        let machine = |n: &str, p: &str| MachineState {
            namespace: "acme".into(),
            cluster: "web".into(),
            name: n.into(),
            phase: p.into(),
        };
        f.update(
            &[host("h1", true)],
            &[
                machine("m1", "Running"),
                machine("m2", "Starting"),
                machine("m3", "Failed"),
            ],
            &[cluster("web", "Ready")],
            &[],
            200,
        );
        f.set_leader(true);
        let text = crate::encode(Some(&f));
        assert!(text.contains("paddock_host_ready{host=\"h1\"} 1"), "{text}");
        assert!(!text.contains("h2"), "{text}");
        assert!(text.contains("paddock_host_cpu{host=\"h1\",kind=\"allocated\"} 30"));
        assert!(text.contains(
            "paddock_cluster_phase{namespace=\"acme\",cluster=\"web\",phase=\"Ready\"} 1"
        ));
        assert!(!text.contains("phase=\"Provisioning\"} 1"), "{text}");
        // Every known phase is there, at 0 when no cluster is in it.
        assert!(text.contains("paddock_clusters{phase=\"Degraded\"} 0"));
        assert!(text.contains("paddock_leader 1"));
        assert!(text.contains(
            "paddock_cluster_machines_not_running{namespace=\"acme\",cluster=\"web\"} 2"
        ));
        assert!(!text.contains("m1"), "no series per Machine");
        assert!(text.contains("paddock_fleet_refreshed_timestamp_seconds 200"));
    }
}
