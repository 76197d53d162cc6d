//! What the scheduler knows of the fleet, kept current one watch event at
//! a time: each host's room, what is bound where, each cluster's spread
//! over hosts, and the Machines that wait for a host.
//!
//! Placement reads indexes, not the fleet: hosts are kept ordered by free
//! memory, and a cluster's own hosts are looked up by cluster. A worker
//! goes to the first host (most free memory first) without a Machine of
//! its cluster, which is found within as many steps as the cluster has
//! Machines; packing takes the least roomy host that fits, one range
//! lookup. So the cost of a placement does not grow with the fleet, and
//! an event costs a few map updates, never a rebuild.
//!
//! Binds this scheduler made that the watch has not shown yet count as
//! made (kube-scheduler's "assume"): a Machine planned onto a host is
//! counted there at once, even if a later event shows an older, unbound
//! version of it, until its bound version arrives or the bind fails.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use paddock_api::{Host, HostPhase, Machine, MachineRole, Memory};

use crate::Config;

/// A cluster: (namespace, name).
type ClusterKey = (String, String);

/// Machines wait in this order: control planes first, then oldest first.
type PendingKey = (bool, Option<Timestamp>, String);

/// What a Ready, schedulable host offers, overcommit included.
#[derive(Debug, Clone)]
struct Offer {
    cpu: f64,
    memory: i64,
    rack: Option<String>,
}

/// What the Machines bound to a host take of it.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    cpu: f64,
    memory: i64,
}

/// A Machine as counted on its host.
#[derive(Debug, Clone)]
struct Placed {
    host: String,
    cpu: f64,
    memory: i64,
    cluster: ClusterKey,
    control_plane: bool,
}

/// A bind this scheduler made that the watch has not shown yet.
#[derive(Debug, Clone)]
struct Assumed {
    host: String,
    /// The Machine as last seen (unbound), to wait again if the bind fails.
    latest: Arc<Machine>,
}

/// The scheduler's view of hosts and Machines; see the module documentation.
#[derive(Debug)]
pub struct Fleet {
    cpu_overcommit: f64,
    memory_overcommit: f64,
    rack_label: String,
    spread_workers: bool,
    /// Ready, schedulable hosts with what they offer.
    offers: HashMap<String, Offer>,
    /// Per host (whatever its state): what is bound there.
    used: HashMap<String, Used>,
    /// The hosts of `offers` by free memory.
    by_free: BTreeSet<(i64, String)>,
    /// Hosts of `offers` per rack.
    racks: HashMap<String, usize>,
    /// Per Machine uid, where it is counted.
    placed: HashMap<String, Placed>,
    /// Per cluster, per host: (control-plane Machines, all Machines).
    spread: HashMap<ClusterKey, HashMap<String, (u32, u32)>>,
    pending: BTreeMap<PendingKey, Arc<Machine>>,
    pending_keys: HashMap<String, PendingKey>,
    assumed: HashMap<String, Assumed>,
}

/// Where a Machine goes, or why it cannot go anywhere.
pub type Plan = Result<String, String>;

fn cluster_of(m: &Machine) -> ClusterKey {
    (
        m.namespace().unwrap_or_default(),
        m.spec.cluster_name.clone(),
    )
}

fn bytes(m: Memory) -> i64 {
    i64::try_from(m.bytes()).unwrap_or(i64::MAX)
}

impl Fleet {
    pub fn new(cfg: &Config) -> Self {
        Self {
            cpu_overcommit: cfg.cpu_overcommit,
            memory_overcommit: cfg.memory_overcommit,
            rack_label: cfg.rack_label.clone(),
            spread_workers: cfg.spread_workers,
            offers: HashMap::new(),
            used: HashMap::new(),
            by_free: BTreeSet::new(),
            racks: HashMap::new(),
            placed: HashMap::new(),
            spread: HashMap::new(),
            pending: BTreeMap::new(),
            pending_keys: HashMap::new(),
            assumed: HashMap::new(),
        }
    }

    fn used(&self, host: &str) -> Used {
        self.used.get(host).copied().unwrap_or_default()
    }

    /// Takes `host` out of the free-memory order (before its room changes).
    fn unindex(&mut self, host: &str) {
        if let Some(o) = self.offers.get(host) {
            let free = o.memory - self.used(host).memory;
            self.by_free.remove(&(free, host.to_owned()));
        }
    }

    /// Puts `host` back in the free-memory order (after its room changed).
    fn index(&mut self, host: &str) {
        if let Some(o) = self.offers.get(host) {
            let free = o.memory - self.used(host).memory;
            self.by_free.insert((free, host.to_owned()));
        }
    }

    /// Free (cpu, memory bytes) on a host that takes Machines.
    pub fn free(&self, host: &str) -> Option<(f64, i64)> {
        let o = self.offers.get(host)?;
        let u = self.used(host);
        Some((o.cpu - u.cpu, o.memory - u.memory))
    }

    /// Machines waiting for a host (planned ones excluded).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn forget_host(&mut self, name: &str) {
        self.unindex(name);
        if let Some(rack) = self.offers.remove(name).and_then(|o| o.rack)
            && let Some(n) = self.racks.get_mut(&rack)
        {
            *n -= 1;
            if *n == 0 {
                self.racks.remove(&rack);
            }
        }
    }

    pub fn host_applied(&mut self, h: &Host) {
        let name = h.name_any();
        self.forget_host(&name);
        let st = h.status.as_ref();
        let eligible = !h.spec.unschedulable
            && h.metadata.deletion_timestamp.is_none()
            && st.and_then(|s| s.phase) == Some(HostPhase::Ready);
        let Some(a) = st.and_then(|s| s.allocatable.as_ref()).filter(|_| eligible) else {
            return;
        };
        let rack = h.labels().get(&self.rack_label).cloned();
        if let Some(r) = &rack {
            *self.racks.entry(r.clone()).or_default() += 1;
        }
        self.offers.insert(
            name.clone(),
            Offer {
                cpu: f64::from(a.cpu) * self.cpu_overcommit,
                memory: (a.memory.bytes() as f64 * self.memory_overcommit) as i64,
                rack,
            },
        );
        self.index(&name);
    }

    /// A Host is gone. What is bound there stays counted (host health
    /// replaces those Machines).
    pub fn host_deleted(&mut self, name: &str) {
        self.forget_host(name);
    }

    /// Every Host, after a relist.
    pub fn reset_hosts<'a>(&mut self, hosts: impl IntoIterator<Item = &'a Host>) {
        self.offers.clear();
        self.by_free.clear();
        self.racks.clear();
        for h in hosts {
            self.host_applied(h);
        }
    }

    fn count(&mut self, uid: &str, host: &str, m: &Machine) {
        self.uncount(uid);
        let p = Placed {
            host: host.to_owned(),
            cpu: f64::from(m.spec.cpu),
            memory: bytes(m.spec.memory),
            cluster: cluster_of(m),
            control_plane: m.spec.role == MachineRole::ControlPlane,
        };
        self.unindex(host);
        let u = self.used.entry(host.to_owned()).or_default();
        u.cpu += p.cpu;
        u.memory += p.memory;
        self.index(host);
        let e = self
            .spread
            .entry(p.cluster.clone())
            .or_default()
            .entry(host.to_owned())
            .or_default();
        e.0 += u32::from(p.control_plane);
        e.1 += 1;
        self.placed.insert(uid.to_owned(), p);
    }

    fn uncount(&mut self, uid: &str) {
        let Some(p) = self.placed.remove(uid) else {
            return;
        };
        self.unindex(&p.host);
        if let Some(u) = self.used.get_mut(&p.host) {
            u.cpu -= p.cpu;
            u.memory -= p.memory;
        }
        self.index(&p.host);
        if let Some(hosts) = self.spread.get_mut(&p.cluster) {
            if let Some(e) = hosts.get_mut(&p.host) {
                e.0 -= u32::from(p.control_plane);
                e.1 -= 1;
                if e.1 == 0 {
                    hosts.remove(&p.host);
                }
            }
            if hosts.is_empty() {
                self.spread.remove(&p.cluster);
            }
        }
    }

    fn unpend(&mut self, uid: &str) {
        if let Some(k) = self.pending_keys.remove(uid) {
            self.pending.remove(&k);
        }
    }

    /// A Machine was created or changed.
    pub fn machine_applied(&mut self, m: Arc<Machine>) {
        let Some(uid) = m.uid() else { return };
        self.uncount(&uid);
        self.unpend(&uid);
        let host = match &m.spec.host_name {
            Some(h) => {
                self.assumed.remove(&uid);
                Some(h.clone())
            }
            None => self.assumed.get_mut(&uid).map(|a| {
                a.latest = m.clone();
                a.host.clone()
            }),
        };
        if let Some(host) = host {
            // Bound (or deleting while bound): its VM holds the room.
            self.count(&uid, &host, &m);
        } else if m.metadata.deletion_timestamp.is_none() {
            let key = (
                m.spec.role != MachineRole::ControlPlane,
                m.metadata.creation_timestamp.as_ref().map(|t| t.0),
                uid.clone(),
            );
            self.pending_keys.insert(uid, key.clone());
            self.pending.insert(key, m);
        }
    }

    /// A Machine is gone.
    pub fn machine_deleted(&mut self, m: &Machine) {
        let Some(uid) = m.uid() else { return };
        self.uncount(&uid);
        self.unpend(&uid);
        self.assumed.remove(&uid);
    }

    /// Every Machine, after a relist. Binds still in flight stay assumed.
    pub fn reset_machines(&mut self, machines: impl IntoIterator<Item = Arc<Machine>>) {
        // With no offers, counting touches no index; it is rebuilt after.
        let offers = std::mem::take(&mut self.offers);
        self.by_free.clear();
        self.used.clear();
        self.placed.clear();
        self.spread.clear();
        self.pending.clear();
        self.pending_keys.clear();
        let mut seen = HashSet::new();
        for m in machines {
            if let Some(uid) = m.uid() {
                seen.insert(uid);
            }
            self.machine_applied(m);
        }
        self.assumed.retain(|uid, _| seen.contains(uid));
        self.offers = offers;
        let names: Vec<String> = self.offers.keys().cloned().collect();
        for n in names {
            self.index(&n);
        }
    }

    /// A bind failed: the Machine waits for a host again (unless the watch
    /// has meanwhile shown it bound or gone).
    pub fn bind_failed(&mut self, uid: &str) {
        if let Some(a) = self.assumed.remove(uid) {
            self.uncount(uid);
            self.machine_applied(a.latest);
        }
    }

    /// Places every waiting Machine, in order, against the room left; the
    /// placed ones are assumed bound. Returns each Machine with its plan.
    pub fn plan(&mut self) -> Vec<(Arc<Machine>, Plan)> {
        let waiting: Vec<Arc<Machine>> = self.pending.values().cloned().collect();
        let mut plans = Vec::with_capacity(waiting.len());
        for m in waiting {
            let plan = self.place(&m);
            if let (Ok(host), Some(uid)) = (&plan, m.uid()) {
                self.unpend(&uid);
                self.assumed.insert(
                    uid.clone(),
                    Assumed {
                        host: host.clone(),
                        latest: m.clone(),
                    },
                );
                self.count(&uid, host, &m);
            }
            plans.push((m, plan));
        }
        plans
    }

    fn fits_cpu(&self, host: &str, cpu: f64) -> bool {
        self.free(host).is_some_and(|(c, _)| c >= cpu)
    }

    /// Where `m` should go, or why it cannot go anywhere. Workers spread
    /// (fewest of their cluster, then most free memory) or pack (least free
    /// memory that fits); a control plane goes to a host without one of its
    /// cluster's if there is one (required then), among those to a rack
    /// without one, then to the most free memory.
    pub fn place(&self, m: &Machine) -> Plan {
        if self.by_free.is_empty() {
            return Err("no Ready, schedulable host".into());
        }
        let cpu = f64::from(m.spec.cpu);
        let memory = bytes(m.spec.memory);
        let counts = self.spread.get(&cluster_of(m));
        let on = |h: &str| counts.and_then(|c| c.get(h)).copied().unwrap_or_default();
        // Hosts with the memory, most free first; then those with the cpu too.
        let roomy = self.by_free.range((memory, String::new())..);
        let mut fitting = roomy
            .clone()
            .rev()
            .map(|(_, h)| h)
            .filter(|h| self.fits_cpu(h, cpu));
        let pick = if m.spec.role == MachineRole::ControlPlane {
            let cp_racks: HashSet<&str> = counts
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.0 > 0)
                .filter_map(|(h, _)| self.offers.get(h)?.rack.as_deref())
                .collect();
            let new_rack_exists = self.racks.keys().any(|r| !cp_racks.contains(r.as_str()));
            let mut first_fit = None;
            let mut first_free = None;
            let mut pick = None;
            for h in fitting {
                first_fit.get_or_insert(h);
                if on(h).0 > 0 {
                    continue;
                }
                first_free.get_or_insert(h);
                let new_rack = self.offers[h]
                    .rack
                    .as_deref()
                    .is_some_and(|r| !cp_racks.contains(r));
                if new_rack || !new_rack_exists {
                    pick = Some(h);
                    break;
                }
            }
            pick.or(first_free).or(first_fit)
        } else if self.spread_workers {
            let mut best: Option<(&String, u32)> = None;
            for h in fitting.by_ref() {
                let n = on(h).1;
                if best.is_none_or(|(_, b)| n < b) {
                    best = Some((h, n));
                }
                if n == 0 {
                    break;
                }
            }
            best.map(|(h, _)| h)
        } else {
            roomy.map(|(_, h)| h).find(|h| self.fits_cpu(h, cpu))
        };
        if let Some(h) = pick {
            return Ok(h.clone());
        }
        let (free, host) = self.by_free.last().cloned().unwrap_or_default();
        let free_cpu = self.free(&host).map_or(0.0, |f| f.0);
        Err(format!(
            "needs {} cpu and {} memory; largest free is {} memory and {free_cpu:.0} cpu on {host}",
            m.spec.cpu,
            m.spec.memory,
            Memory::from_bytes(u64::try_from(free.max(0)).unwrap_or_default())
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn host(name: &str, cpu: u32, memory: &str, rack: Option<&str>, ready: bool) -> Host {
        let mut labels = serde_json::Map::new();
        if let Some(r) = rack {
            labels.insert("paddock.io/rack".into(), json!(r));
        }
        serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Host",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
            "status": {"phase": if ready { "Ready" } else { "NotReady" },
                       "allocatable": {"cpu": cpu, "memory": memory}}
        }))
        .expect("host")
    }

    fn machine(
        name: &str,
        role: &str,
        cluster: &str,
        host: Option<&str>,
        memory: &str,
    ) -> Arc<Machine> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
                "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}"),
                             "creationTimestamp": "2026-12-01T00:00:00Z"},
                "spec": {"clusterName": cluster, "role": role, "cpu": 1, "memory": memory,
                         "disk": "1Gi", "hostName": host}
            }))
            .expect("machine"),
        )
    }

    fn cfg() -> Config {
        Config {
            cpu_overcommit: 1.0,
            ..Config::default()
        }
    }

    fn fleet(cfg: &Config, hosts: &[Host], machines: &[Arc<Machine>]) -> Fleet {
        let mut f = Fleet::new(cfg);
        f.reset_hosts(hosts);
        f.reset_machines(machines.iter().cloned());
        f
    }

    const GIB: i64 = 1 << 30;

    #[test]
    fn rooms_are_ready_schedulable_hosts_less_what_is_bound() {
        let mut cordoned = host("h3", 8, "16Gi", None, true);
        cordoned.spec.unschedulable = true;
        let hosts = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "16Gi", None, false),
            cordoned,
        ];
        let bound = [machine("a", "worker", "demo", Some("h1"), "4Gi")];
        let f = fleet(&cfg(), &hosts, &bound);
        assert_eq!(f.free("h1"), Some((7.0, 12 * GIB)));
        assert_eq!(f.free("h2"), None, "NotReady takes nothing");
        assert_eq!(f.free("h3"), None, "cordoned takes nothing");
    }

    #[test]
    fn control_planes_go_to_different_hosts_and_racks() {
        let hosts = [
            host("a1", 8, "16Gi", Some("a"), true),
            host("a2", 8, "32Gi", Some("a"), true),
            host("b1", 8, "8Gi", Some("b"), true),
        ];
        let first = machine("cp1", "control-plane", "demo", Some("a2"), "2Gi");
        let f = fleet(&cfg(), &hosts, std::slice::from_ref(&first));
        let cp2 = machine("cp2", "control-plane", "demo", None, "2Gi");
        assert_eq!(
            f.place(&cp2).as_deref(),
            Ok("b1"),
            "another rack, though a1 has more room"
        );
        // Another cluster's control plane is not in the way.
        let other = machine("x", "control-plane", "other", None, "2Gi");
        assert_eq!(f.place(&other).as_deref(), Ok("a2"), "most free memory");
        // Without racks, a host without one of the cluster's control planes.
        let flat = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "32Gi", None, true),
        ];
        let on_h2 = machine("cp1", "control-plane", "demo", Some("h2"), "2Gi");
        let f = fleet(&cfg(), &flat, &[on_h2]);
        assert_eq!(f.place(&cp2).as_deref(), Ok("h1"));
    }

    #[test]
    fn workers_spread_or_pack() {
        let hosts = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "8Gi", None, true),
        ];
        let bound = [machine("w1", "worker", "demo", Some("h1"), "1Gi")];
        let f = fleet(&cfg(), &hosts, &bound);
        let w2 = machine("w2", "worker", "demo", None, "1Gi");
        assert_eq!(f.place(&w2).as_deref(), Ok("h2"), "fewest of its cluster");
        let pack = Config {
            spread_workers: false,
            ..cfg()
        };
        let f = fleet(&pack, &hosts, &bound);
        assert_eq!(
            f.place(&w2).as_deref(),
            Ok("h2"),
            "least free memory that fits"
        );
        let big = machine("big", "worker", "demo", None, "10Gi");
        assert_eq!(f.place(&big).as_deref(), Ok("h1"), "only h1 fits");
    }

    #[test]
    fn no_room_names_the_shortfall() {
        let f = fleet(&cfg(), &[host("h1", 2, "4Gi", None, true)], &[]);
        let huge = machine("huge", "worker", "demo", None, "900Gi");
        assert_eq!(
            f.place(&huge),
            Err("needs 1 cpu and 900Gi memory; largest free is 4Gi memory and 2 cpu on h1".into())
        );
        let f = fleet(&cfg(), &[], &[]);
        assert_eq!(f.place(&huge), Err("no Ready, schedulable host".into()));
    }

    #[test]
    fn a_plan_takes_room_and_spreads_within_itself() {
        let hosts = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "16Gi", None, true),
        ];
        let waiting = [
            machine("w1", "worker", "demo", None, "4Gi"),
            machine("w2", "worker", "demo", None, "4Gi"),
            machine("cp", "control-plane", "demo", None, "4Gi"),
        ];
        let mut f = fleet(&cfg(), &hosts, &waiting);
        let plans = f.plan();
        let names: Vec<(String, String)> = plans
            .iter()
            .map(|(m, p)| (m.name_any(), p.clone().expect("placed")))
            .collect();
        assert_eq!(names[0].0, "cp", "control planes first");
        let hosts_used: HashSet<&str> = names[1..].iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(hosts_used.len(), 2, "the workers spread: {names:?}");
        assert_eq!(f.pending(), 0);
        let free: i64 = ["h1", "h2"]
            .iter()
            .map(|h| f.free(h).expect("room").1)
            .sum();
        assert_eq!(free, 20 * GIB, "12 GiB planned of 32");
        assert!(f.plan().is_empty(), "nothing is planned twice");
    }

    #[test]
    fn an_assumed_bind_survives_a_stale_event_and_is_undone_when_it_fails() {
        let hosts = [host("h1", 8, "16Gi", None, true)];
        let w = machine("w", "worker", "demo", None, "4Gi");
        let mut f = fleet(&cfg(), &hosts, std::slice::from_ref(&w));
        assert_eq!(f.plan().len(), 1);
        // The watch shows an older change of the unbound Machine.
        f.machine_applied(w.clone());
        assert_eq!(f.pending(), 0, "still assumed bound");
        assert_eq!(f.free("h1"), Some((7.0, 12 * GIB)));
        f.bind_failed("uid-w");
        assert_eq!(f.pending(), 1, "waits again");
        assert_eq!(f.free("h1"), Some((8.0, 16 * GIB)), "its room is free");
        // Planned again and seen bound: counted once, a late failure changes nothing.
        assert_eq!(f.plan().len(), 1);
        f.machine_applied(machine("w", "worker", "demo", Some("h1"), "4Gi"));
        f.bind_failed("uid-w");
        assert_eq!(f.free("h1"), Some((7.0, 12 * GIB)));
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn host_and_machine_changes_move_the_room() {
        let mut f = fleet(&cfg(), &[host("h1", 8, "16Gi", None, true)], &[]);
        let w = machine("w", "worker", "demo", Some("h1"), "4Gi");
        f.machine_applied(w.clone());
        assert_eq!(f.free("h1"), Some((7.0, 12 * GIB)));
        // Moved (as a relist could show it) to a host that is not Ready.
        f.machine_applied(machine("w", "worker", "demo", Some("h2"), "4Gi"));
        assert_eq!(f.free("h1"), Some((8.0, 16 * GIB)));
        f.host_applied(&host("h2", 4, "8Gi", None, true));
        assert_eq!(f.free("h2"), Some((3.0, 4 * GIB)), "its Machines count");
        f.host_applied(&host("h2", 4, "8Gi", None, false));
        assert_eq!(f.free("h2"), None);
        f.machine_deleted(&w);
        f.host_applied(&host("h2", 4, "8Gi", None, true));
        assert_eq!(f.free("h2"), Some((4.0, 8 * GIB)));
        f.host_deleted("h1");
        let x = machine("x", "worker", "demo", None, "6Gi");
        assert_eq!(f.place(&x).as_deref(), Ok("h2"));
        let y = machine("y", "worker", "demo", None, "9Gi");
        assert!(f.place(&y).is_err(), "h1 is gone");
    }

    #[test]
    fn in_a_large_fleet_every_cluster_spreads_over_hosts_of_its_own() {
        // 10,000 hosts and 5,000 clusters of 10 (a placement walks past at
        // most its own cluster's hosts: 50,000 of them take about a second
        // in a debug build).
        let hosts: Vec<Host> = (0..10_000)
            .map(|i| host(&format!("h{i:05}"), 64, "256Gi", None, true))
            .collect();
        let mut f = fleet(&cfg(), &hosts, &[]);
        for c in 0..5_000 {
            for i in 0..10 {
                f.machine_applied(machine(
                    &format!("c{c}-{i}"),
                    "worker",
                    &format!("c{c}"),
                    None,
                    "1Gi",
                ));
            }
        }
        let plans = f.plan();
        assert_eq!(plans.len(), 50_000);
        let mut per_cluster: HashMap<String, HashSet<String>> = HashMap::new();
        for (m, p) in &plans {
            per_cluster
                .entry(m.spec.cluster_name.clone())
                .or_default()
                .insert(p.clone().expect("placed"));
        }
        assert!(
            per_cluster.values().all(|h| h.len() == 10),
            "each cluster's 10 workers on 10 hosts"
        );
    }
}
