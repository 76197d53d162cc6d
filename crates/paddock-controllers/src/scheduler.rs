//! The scheduler: binds each unbound Machine to a Ready, schedulable Host
//! with room for its cpu and memory; spreads a cluster's control plane over
//! hosts (and racks); spreads or packs workers. A Machine that fits nowhere
//! stays Pending with a condition that says why.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use paddock_api::{Host, HostPhase, Machine, MachineRole, Memory};
use serde_json::json;

use crate::Config;

/// What a host offers and what is bound to it.
#[derive(Debug, Clone)]
pub struct Room {
    pub name: String,
    pub rack: Option<String>,
    pub cpu: f64,
    pub memory: f64,
    pub used_cpu: f64,
    pub used_memory: f64,
}

impl Room {
    fn free_cpu(&self) -> f64 {
        self.cpu - self.used_cpu
    }
    fn free_memory(&self) -> f64 {
        self.memory - self.used_memory
    }
    fn fits(&self, m: &Machine) -> bool {
        self.free_cpu() >= f64::from(m.spec.cpu)
            && self.free_memory() >= m.spec.memory.bytes() as f64
    }
}

/// Capacity of every schedulable, Ready host, less what is bound there.
pub fn rooms(cfg: &Config, hosts: &[Arc<Host>], machines: &[Arc<Machine>]) -> Vec<Room> {
    let mut rooms: Vec<Room> = hosts
        .iter()
        .filter(|h| !h.spec.unschedulable && h.metadata.deletion_timestamp.is_none())
        .filter(|h| h.status.as_ref().and_then(|s| s.phase) == Some(HostPhase::Ready))
        .filter_map(|h| {
            let a = h.status.as_ref()?.allocatable.clone()?;
            Some(Room {
                name: h.name_any(),
                rack: h.labels().get(&cfg.rack_label).cloned(),
                cpu: f64::from(a.cpu) * cfg.cpu_overcommit,
                memory: a.memory.bytes() as f64 * cfg.memory_overcommit,
                used_cpu: 0.0,
                used_memory: 0.0,
            })
        })
        .collect();
    let index: HashMap<String, usize> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    for m in machines {
        if let Some(i) = m.spec.host_name.as_ref().and_then(|h| index.get(h)) {
            rooms[*i].used_cpu += f64::from(m.spec.cpu);
            rooms[*i].used_memory += m.spec.memory.bytes() as f64;
        }
    }
    rooms
}

/// Per cluster and host: (control-plane machines, all machines) bound there.
#[derive(Default)]
pub struct Spread(HashMap<(String, String), HashMap<String, (usize, usize)>>);

impl Spread {
    pub fn new(machines: &[Arc<Machine>]) -> Self {
        let mut s = Self::default();
        for m in machines {
            if let Some(h) = &m.spec.host_name {
                s.add(m, h);
            }
        }
        s
    }
    fn key(m: &Machine) -> (String, String) {
        (
            m.namespace().unwrap_or_default(),
            m.spec.cluster_name.clone(),
        )
    }
    pub fn add(&mut self, m: &Machine, host: &str) {
        let e = self
            .0
            .entry(Self::key(m))
            .or_default()
            .entry(host.to_owned())
            .or_default();
        if m.spec.role == MachineRole::ControlPlane {
            e.0 += 1;
        }
        e.1 += 1;
    }
    /// Counts by host of `m`'s cluster: looked up once per placement, not per host.
    fn of(&self, m: &Machine) -> Counts<'_> {
        Counts(self.0.get(&Self::key(m)))
    }
}

/// One cluster's (control-plane machines, all machines) by host.
struct Counts<'a>(Option<&'a HashMap<String, (usize, usize)>>);

impl Counts<'_> {
    fn on(&self, host: &str) -> (usize, usize) {
        self.0
            .and_then(|h| h.get(host))
            .copied()
            .unwrap_or_default()
    }
}

/// Where `m` should go, or why it cannot go anywhere.
pub fn place(cfg: &Config, m: &Machine, rooms: &[Room], spread: &Spread) -> Result<usize, String> {
    let fits: Vec<usize> = (0..rooms.len()).filter(|&i| rooms[i].fits(m)).collect();
    if fits.is_empty() {
        if rooms.is_empty() {
            return Err("no Ready, schedulable host".into());
        }
        let best = rooms
            .iter()
            .max_by(|a, b| a.free_memory().total_cmp(&b.free_memory()))
            .map(|r| (r.name.clone(), r.free_memory(), r.free_cpu()));
        let (host, mem, cpu) = best.unwrap_or_default();
        let mem = Memory::from_bytes(mem.max(0.0) as u64);
        return Err(format!(
            "needs {} cpu and {} memory; largest free is {mem} memory and {cpu:.0} cpu on {host}",
            m.spec.cpu, m.spec.memory
        ));
    }
    let counts = spread.of(m);
    if m.spec.role == MachineRole::ControlPlane {
        // Spread: a host without this cluster's control plane if there is one
        // (required then); among those, a rack without one.
        let cp_racks: Vec<Option<String>> = rooms
            .iter()
            .filter(|r| counts.on(&r.name).0 > 0)
            .map(|r| r.rack.clone())
            .collect();
        let free_hosts: Vec<usize> = fits
            .iter()
            .copied()
            .filter(|&i| counts.on(&rooms[i].name).0 == 0)
            .collect();
        let pool = if free_hosts.is_empty() {
            fits.clone()
        } else {
            free_hosts
        };
        let new_rack: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| rooms[i].rack.is_some() && !cp_racks.contains(&rooms[i].rack))
            .collect();
        let pool = if new_rack.is_empty() { pool } else { new_rack };
        return pool
            .into_iter()
            .max_by(|&a, &b| rooms[a].free_memory().total_cmp(&rooms[b].free_memory()))
            .ok_or_else(|| "no host".into());
    }
    let pick = if cfg.spread_workers {
        fits.iter().copied().min_by(|&a, &b| {
            (
                counts.on(&rooms[a].name).1,
                std::cmp::Reverse(rooms[a].free_memory() as u64),
            )
                .cmp(&(
                    counts.on(&rooms[b].name).1,
                    std::cmp::Reverse(rooms[b].free_memory() as u64),
                ))
        })
    } else {
        fits.iter()
            .copied()
            .min_by(|&a, &b| rooms[a].free_memory().total_cmp(&rooms[b].free_memory()))
    };
    pick.ok_or_else(|| "no host".into())
}

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

/// One pass: every unbound Machine, control planes first. Placements are
/// decided in order against the capacity left; the binds then go out
/// concurrently, each conditional on the Machine's resourceVersion.
pub async fn pass(
    client: &kube::Client,
    cfg: &Config,
    hosts: &[Arc<Host>],
    machines: &[Arc<Machine>],
    assumed: &mut HashMap<String, String>,
) -> usize {
    // Binds this scheduler made that the cache does not show yet count as
    // made (kube-scheduler's "assume"): else the next pass would place
    // against capacity and spread that are already taken.
    let unbound: std::collections::HashSet<String> = machines
        .iter()
        .filter(|m| m.spec.host_name.is_none())
        .filter_map(|m| m.uid())
        .collect();
    assumed.retain(|uid, _| unbound.contains(uid));
    let machines: Vec<Arc<Machine>> = machines
        .iter()
        .map(|m| match m.uid().and_then(|u| assumed.get(&u)) {
            Some(h) => {
                let mut a = (**m).clone();
                a.spec.host_name = Some(h.clone());
                Arc::new(a)
            }
            None => m.clone(),
        })
        .collect();
    let machines = &machines[..];
    let mut rooms = rooms(cfg, hosts, machines);
    let mut pending: Vec<&Arc<Machine>> = machines
        .iter()
        .filter(|m| m.spec.host_name.is_none() && m.metadata.deletion_timestamp.is_none())
        .collect();
    pending.sort_by_key(|m| {
        (
            m.spec.role != MachineRole::ControlPlane,
            m.metadata.creation_timestamp.clone().map(|t| t.0),
        )
    });
    let mut spread = Spread::new(machines);
    let mut plans = Vec::with_capacity(pending.len());
    for m in pending {
        match place(cfg, m, &rooms, &spread) {
            Ok(i) => {
                rooms[i].used_cpu += f64::from(m.spec.cpu);
                rooms[i].used_memory += m.spec.memory.bytes() as f64;
                spread.add(m, &rooms[i].name);
                plans.push((m.clone(), Ok(rooms[i].name.clone())));
            }
            Err(why) => plans.push((m.clone(), Err(why))),
        }
    }
    let results: Vec<(String, Option<String>)> = futures::stream::iter(plans)
        .map(|(m, plan)| async move {
            let host = plan.as_ref().ok().cloned();
            let bound = apply(client, &m, plan).await;
            (m.uid().unwrap_or_default(), host.filter(|_| bound))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut n = 0;
    for (uid, host) in results {
        if let Some(h) = host {
            assumed.insert(uid, h);
            n += 1;
        }
    }
    n
}

/// Binds `m` to the planned host, or records why it has none. True if bound.
async fn apply(client: &kube::Client, m: &Machine, plan: Result<String, String>) -> bool {
    let api: Api<Machine> = Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
    match plan {
        Ok(host) => {
            // One write: the host, the Scheduled condition and the phase,
            // refused if the Machine is bound already.
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
                    true
                }
                Err(e) => {
                    tracing::debug!(machine = %m.name_any(), error = %e, "bind lost a race; next pass");
                    false
                }
            }
        }
        Err(why) => {
            let same = m.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|x| x.type_ == "Scheduled" && x.message == why)
            });
            if !same {
                tracing::info!(machine = %m.name_any(), reason = %why, "unschedulable");
                let c = scheduled_condition(m, false, "Unschedulable", why.clone());
                let st =
                    json!({"status": {"conditions": with_condition(m, c), "phase": "Pending"}});
                let _ = api
                    .patch_status(&m.name_any(), &PatchParams::default(), &Patch::Merge(&st))
                    .await;
                crate::events::record(client, m, true, "FailedScheduling", why).await;
            }
            false
        }
    }
}

pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let machines = watchers.store::<Machine>(Api::all(client.clone()), notify.clone());
    let hosts = watchers.store::<Host>(Api::all(client.clone()), notify.clone());
    let _ = machines.wait_until_ready().await;
    let _ = hosts.wait_until_ready().await;
    let mut assumed = HashMap::new();
    loop {
        pass(
            &client,
            &cfg,
            &hosts.state(),
            &machines.state(),
            &mut assumed,
        )
        .await;
        tokio::select! {
            _ = notify.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, cpu: u32, memory: &str, rack: Option<&str>, ready: bool) -> Arc<Host> {
        let mut labels = serde_json::Map::new();
        if let Some(r) = rack {
            labels.insert("paddock.io/rack".into(), json!(r));
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "paddock.io/v1alpha1", "kind": "Host",
                "metadata": {"name": name, "labels": labels},
                "spec": {},
                "status": {"phase": if ready { "Ready" } else { "NotReady" },
                           "allocatable": {"cpu": cpu, "memory": memory}}
            }))
            .expect("host"),
        )
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
                "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}")},
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

    #[test]
    fn rooms_are_ready_schedulable_hosts_less_what_is_bound() {
        let mut cordoned = (*host("h3", 8, "16Gi", None, true)).clone();
        cordoned.spec.unschedulable = true;
        let hosts = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "16Gi", None, false),
            Arc::new(cordoned),
        ];
        let bound = [machine("a", "worker", "demo", Some("h1"), "4Gi")];
        let rooms = rooms(&cfg(), &hosts, &bound);
        assert_eq!(rooms.len(), 1, "NotReady and cordoned hosts take nothing");
        assert_eq!(rooms[0].name, "h1");
        assert_eq!(rooms[0].free_memory(), (12u64 << 30) as f64);
        assert_eq!(rooms[0].free_cpu(), 7.0);
    }

    #[test]
    fn control_planes_go_to_different_hosts_and_racks() {
        let hosts = [
            host("a1", 8, "16Gi", Some("a"), true),
            host("a2", 8, "32Gi", Some("a"), true),
            host("b1", 8, "8Gi", Some("b"), true),
        ];
        let first = machine("cp1", "control-plane", "demo", Some("a2"), "2Gi");
        let rooms = rooms(&cfg(), &hosts, std::slice::from_ref(&first));
        let spread = Spread::new(std::slice::from_ref(&first));
        let cp2 = machine("cp2", "control-plane", "demo", None, "2Gi");
        let i = place(&cfg(), &cp2, &rooms, &spread).expect("placed");
        assert_eq!(rooms[i].name, "b1", "another rack, though a1 has more room");
        // Another cluster's control plane is not in the way.
        let other = machine("x", "control-plane", "other", None, "2Gi");
        let i = place(&cfg(), &other, &rooms, &spread).expect("placed");
        assert_eq!(rooms[i].name, "a2", "most free memory");
    }

    #[test]
    fn workers_spread_or_pack() {
        let hosts = [
            host("h1", 8, "16Gi", None, true),
            host("h2", 8, "8Gi", None, true),
        ];
        let bound = [machine("w1", "worker", "demo", Some("h1"), "1Gi")];
        let rooms = rooms(&cfg(), &hosts, &bound);
        let spread = Spread::new(&bound);
        let w2 = machine("w2", "worker", "demo", None, "1Gi");
        let i = place(&cfg(), &w2, &rooms, &spread).expect("placed");
        assert_eq!(rooms[i].name, "h2", "fewest of its cluster");
        let pack = Config {
            spread_workers: false,
            ..cfg()
        };
        let i = place(&pack, &w2, &rooms, &spread).expect("placed");
        assert_eq!(rooms[i].name, "h2", "least free memory that fits");
        let big = machine("big", "worker", "demo", None, "10Gi");
        let i = place(&pack, &big, &rooms, &spread).expect("placed");
        assert_eq!(rooms[i].name, "h1", "only h1 fits");
    }

    #[test]
    fn no_room_names_the_shortfall() {
        let hosts = [host("h1", 2, "4Gi", None, true)];
        let rooms = rooms(&cfg(), &hosts, &[]);
        let huge = machine("huge", "worker", "demo", None, "900Gi");
        let why = place(&cfg(), &huge, &rooms, &Spread::default()).expect_err("no room");
        assert_eq!(
            why,
            "needs 1 cpu and 900Gi memory; largest free is 4Gi memory and 2 cpu on h1"
        );
        let none = place(&cfg(), &huge, &[], &Spread::default()).expect_err("no hosts");
        assert_eq!(none, "no Ready, schedulable host");
    }
}
