//! The cluster controller: finalizer, overlay, one Machine per control-plane
//! replica and per node-pool replica, scaling, and the Cluster's status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use paddock_api::cluster::{IngressStatus, OverlayStatus};
use paddock_api::machine::MachineSpec;
use paddock_api::{
    Cluster, ClusterPhase, ClusterStatus, LABEL_CLUSTER, LABEL_POOL, LABEL_ROLE, Machine,
    MachineImage, MachineRole, Memory,
};
use serde_json::json;

use crate::intake::{self, Intake};
use crate::{Config, bootstrap, events, overlay};

/// A generated name suffix, as the API server's generateName makes them.
fn suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

pub const FINALIZER: &str = "paddock.io/cluster";

/// How often a cluster is reconciled when nothing about it changes.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Creates of one reconcile in flight at once (Machines, bootstrap data):
/// written one after another, a cluster's ten Machines waited for ten
/// commits in turn; together they share the store's group commits.
pub const CREATES_IN_FLIGHT: usize = 16;

/// Machines by (namespace, cluster), then by name.
type MachineIndex = HashMap<(String, String), BTreeMap<String, Machine>>;

struct Ctx {
    client: kube::Client,
    cfg: Arc<Config>,
    /// Every Machine, as the watch last saw it, by (namespace, cluster):
    /// reads come from here, not from a list per reconcile.
    machines: Arc<std::sync::RwLock<MachineIndex>>,
    /// Per cluster uid, Machines this controller created or deleted that the
    /// cache has not shown yet. While any is outstanding the cache is behind
    /// our own writes, so the cluster is not acted on (it would count wrong).
    expect: Mutex<HashMap<String, HashSet<(String, bool)>>>,
    /// Consecutive failed reconciles per cluster uid, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The clusters' Secrets, metadata only: what exists, and the PKI
    /// Secret's annotations (bootstrap data is 8–23 KB a Machine).
    secrets: reflector::Store<PartialObjectMeta<Secret>>,
    /// The overlay claims, as the watch last saw them.
    pool: overlay::Pool,
    /// The registered MachineImages, as the watch last saw them.
    images: reflector::Store<MachineImage>,
    /// How many new Machines may be made now ([`intake`]).
    intake: Arc<Intake>,
}

impl Ctx {
    fn cached(&self, ns: &str, cluster: &str) -> Vec<Machine> {
        let Ok(idx) = self.machines.read() else {
            return Vec::new();
        };
        idx.get(&(ns.to_owned(), cluster.to_owned()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// True when every expected create shows in the cache and every expected
    /// delete shows as gone or deleting.
    fn caught_up(&self, uid: &str, mine: &[Machine]) -> bool {
        let Ok(mut e) = self.expect.lock() else {
            return true;
        };
        let Some(set) = e.get_mut(uid) else {
            return true;
        };
        set.retain(|(name, created)| {
            let m = mine.iter().find(|m| m.name_any() == *name);
            if *created {
                m.is_none()
            } else {
                m.is_some_and(|m| m.metadata.deletion_timestamp.is_none())
            }
        });
        let done = set.is_empty();
        if done {
            e.remove(uid);
        }
        done
    }

    fn expect(&self, uid: &str, name: String, created: bool) {
        if let Ok(mut e) = self.expect.lock() {
            e.entry(uid.to_owned()).or_default().insert((name, created));
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Error(anyhow::Error);

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Self(e)
    }
}
impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self(e.into())
    }
}

/// One group of identical Machines: the control plane or a node pool.
struct Group {
    role: MachineRole,
    pool: Option<String>,
    replicas: u32,
    cpu: u32,
    memory: Memory,
    disk: Memory,
    image: Option<String>,
}

fn groups(c: &Cluster) -> Vec<Group> {
    let cp = &c.spec.control_plane;
    let mut g = vec![Group {
        role: MachineRole::ControlPlane,
        pool: None,
        replicas: cp.replicas,
        cpu: cp.cpu,
        memory: cp.memory,
        disk: cp.disk,
        image: cp.image.clone(),
    }];
    for p in &c.spec.node_pools {
        g.push(Group {
            role: MachineRole::Worker,
            pool: Some(p.name.clone()),
            replicas: p.replicas,
            cpu: p.cpu,
            memory: p.memory,
            disk: p.disk,
            image: p.image.clone(),
        });
    }
    g
}

fn in_group(m: &Machine, g: &Group) -> bool {
    m.spec.role == g.role && m.spec.pool == g.pool
}

pub fn guest_ready(m: &Machine) -> bool {
    m.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "GuestReady" && c.status == "True")
    })
}

/// The Machine's Kubernetes Node is Ready, as the workload cluster's own
/// API last reported it.
pub fn node_ready(m: &Machine) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.node.as_ref())
        .is_some_and(|n| n.ready)
}

/// Ready as the cluster counts it: the guest answers and, where the
/// platform reads the workload cluster's API, its Node is Ready.
fn machine_ready(m: &Machine, reads_nodes: bool) -> bool {
    guest_ready(m) && (!reads_nodes || node_ready(m))
}

/// Some control plane is a Ready Node (see [`machines_to_create`]). The
/// Node is what a join needs; the guest agent answering is not (under TCG
/// it can lag the Node by minutes).
fn a_control_plane_is_ready<'a>(machines: impl IntoIterator<Item = &'a Machine>) -> bool {
    machines
        .into_iter()
        .any(|m| m.spec.role == MachineRole::ControlPlane && node_ready(m))
}

/// How many Machines a group short of `want` creates in this pass.
///
/// Where the platform reads the workload cluster's Nodes (real
/// Kubernetes), Machines are made in the order kubeadm can use them, as
/// Cluster API's control-plane provider does:
/// - control planes join one at a time, each once every other is a Ready
///   Node: etcd takes one new member (a learner) at a time, and two control
///   planes that joined at once failed kubeadm's etcd join;
/// - workers are made once some control plane is a Ready Node
///   (`control_plane_ready`). Before that `kubeadm join` has nothing to
///   join and only retries, and on a busy host the workers' boots starved
///   the first control plane's `kubeadm init` until its API server's
///   start-up hooks timed out.
///
/// Stand-ins (no Nodes to read) are all made at once.
pub fn machines_to_create(
    role: MachineRole,
    current: &[&Machine],
    want: usize,
    reads_nodes: bool,
    control_plane_ready: bool,
) -> usize {
    let short = want.saturating_sub(current.len());
    if !reads_nodes || short == 0 {
        return short;
    }
    match role {
        MachineRole::Worker if control_plane_ready => short,
        MachineRole::Worker => 0,
        MachineRole::ControlPlane if current.iter().all(|m| node_ready(m)) => 1,
        MachineRole::ControlPlane => 0,
    }
}

/// The Machines of a group that go when it scales down to `want`:
/// not-ready ones first, then the newest.
pub fn scale_down<'a>(current: &[&'a Machine], want: usize) -> Vec<&'a Machine> {
    let mut order = current.to_vec();
    order.sort_by_key(|m| {
        (
            guest_ready(m),
            std::cmp::Reverse(m.metadata.creation_timestamp.clone().map(|t| t.0)),
        )
    });
    order.truncate(current.len().saturating_sub(want));
    order
}

/// Host index (last octet) of a Machine's overlay address.
fn host_index(m: &Machine) -> Option<u32> {
    m.spec
        .ip
        .as_deref()?
        .split('/')
        .next()?
        .rsplit('.')
        .next()?
        .parse()
        .ok()
}

fn address(o: &OverlayStatus, idx: u32) -> (String, String) {
    let net: std::net::Ipv4Addr = o
        .subnet
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let ip = std::net::Ipv4Addr::from(u32::from(net) + idx);
    (
        format!("{ip}/24"),
        paddock_api::cluster::overlay_mac(o.vni, idx),
    )
}

/// The image a group that names none boots (the cluster version's), and
/// the control plane's image.
fn images_of(c: &Cluster, images: &[MachineImage]) -> (Option<String>, Option<String>) {
    let default_image = paddock_api::version::image_for(&c.spec.kubernetes_version, images);
    let cp_image = c
        .spec
        .control_plane
        .image
        .clone()
        .or_else(|| default_image.clone());
    (default_image, cp_image)
}

/// One Event naming the Machines a pass created, if it created any.
async fn machines_created(ctx: &Ctx, c: &Cluster, created: &[String]) {
    if !created.is_empty() {
        let msg = created.join(", ");
        events::record(&ctx.client, c, false, "MachineCreated", msg).await;
    }
}

/// Deletes one of the cluster's Machines, expects the cache to show it, and says why.
async fn remove_machine(
    ctx: &Ctx,
    machines: &Api<Machine>,
    c: &Cluster,
    m: &Machine,
    why: String,
) -> Result<(), Error> {
    machines
        .delete(&m.name_any(), &DeleteParams::default())
        .await?;
    ctx.expect(&c.uid().unwrap_or_default(), m.name_any(), false);
    events::record(
        &ctx.client,
        c,
        false,
        "MachineDeleted",
        format!("{}: {why}", m.name_any()),
    )
    .await;
    Ok(())
}

async fn reconcile(c: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let uid = c.uid().unwrap_or_default();
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &ns);
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let mine = ctx.cached(&ns, &name);
    if !ctx.caught_up(&uid, &mine) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    if c.metadata.deletion_timestamp.is_some() {
        let mut left = 0;
        for m in &mine {
            left += 1;
            if m.metadata.deletion_timestamp.is_none() {
                match machines
                    .delete(&m.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if left > 0 {
            set_status(
                &clusters,
                &c,
                &ctx.cfg,
                Seen {
                    phase: ClusterPhase::Deleting,
                    why: deleting_message(&mine),
                    reads_nodes: false,
                },
                None,
                &mine,
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        overlay::release(&ctx.client, &ctx.pool, &uid).await?;
        let fins: Vec<String> = c
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        clusters
            .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": fins, "resourceVersion": c.resource_version()}})))
            .await?;
        events::record(
            &ctx.client,
            c.as_ref(),
            false,
            "Deleted",
            "machines deleted and overlay returned to the pool".into(),
        )
        .await;
        return Ok(Action::await_change());
    }

    // The pass goes on with what each of these writes returns: the cache
    // may not show them yet, and a pass on the older copy would write
    // again and conflict.
    let mut c = c;
    if !c.finalizers().iter().any(|f| f == FINALIZER) {
        let mut fins = c.finalizers().to_vec();
        fins.push(FINALIZER.into());
        c = Arc::new(
            clusters
                .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": fins, "resourceVersion": c.resource_version()}})))
                .await?,
        );
    }

    let overlay = match c.status.as_ref().and_then(|s| s.overlay.clone()) {
        Some(o) => o,
        None => {
            let o = overlay::ensure(&ctx.client, &ctx.cfg, &ctx.pool, &uid).await?;
            let st = json!({"status": {"overlay": o, "phase": "Provisioning"}});
            c = Arc::new(
                clusters
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                    .await?,
            );
            events::record(
                &ctx.client,
                c.as_ref(),
                false,
                "OverlayAllocated",
                format!("VNI {} and subnet {}", o.vni, o.subnet),
            )
            .await;
            o
        }
    };

    let overlay = OverlayStatus {
        gateway_vtep: ctx.cfg.gateway_vtep.map(|v| v.to_string()),
        gateway_mac: Some(paddock_api::cluster::overlay_mac(
            overlay.vni,
            paddock_api::cluster::GATEWAY_HOST_INDEX,
        )),
        ..overlay
    };
    let pki_name = paddock_bootstrap::pki::secret_name(&name);
    if ctx
        .secrets
        .get(&ObjectRef::new(&pki_name).within(&ns))
        .is_none()
    {
        bootstrap::ensure_pki(&ctx.client, &c).await?;
    }

    // Whether the Machines become Kubernetes Nodes that the workload loop
    // reads (and drains): then readiness is the Nodes', and deleted
    // Machines wait for their drain.
    let cached: Vec<MachineImage> = ctx.images.state().iter().map(|i| (**i).clone()).collect();
    let (default_image, cp_image) = images_of(&c, &cached);
    // Admission saw the cluster's images registered: one the cache has yet
    // to show is looked up in the API.
    let stale = match &cp_image {
        Some(i) => !cached.iter().any(|x| x.name_any() == *i),
        None => !c.spec.kubernetes_version.is_empty(),
    };
    let (images, default_image, cp_image) = if stale {
        let listed = Api::<MachineImage>::all(ctx.client.clone())
            .list(&Default::default())
            .await?
            .items;
        let (d, cp) = images_of(&c, &listed);
        (listed, d, cp)
    } else {
        (cached, default_image, cp_image)
    };
    let kube_nodes = images
        .iter()
        .find(|i| Some(i.name_any()) == cp_image)
        .is_some_and(|i| !i.spec.stand_in && i.spec.kubernetes_version.is_some());
    let reads_nodes = kube_nodes && ctx.cfg.gateway_url.is_some();

    // Scale every group to its replicas; Machines of removed pools go.
    let groups = groups(&c);
    let mut used: HashSet<u32> = mine.iter().filter_map(host_index).collect();
    let owner = OwnerReference {
        api_version: Cluster::api_version(&()).into_owned(),
        kind: Cluster::kind(&()).into_owned(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let live: Vec<&Machine> = mine
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    for m in &live {
        if !groups.iter().any(|g| in_group(m, g)) {
            remove_machine(&ctx, &machines, &c, m, "its node pool was removed".into()).await?;
        }
    }
    let control_plane_ready = a_control_plane_is_ready(live.iter().copied());
    // Made together once every group is counted (the creates are
    // concurrent); one Event for the Machines a pass creates, not one per
    // Machine.
    let mut to_make: Vec<(Machine, String)> = Vec::new();
    // Fewer granted than wanted: the intake wakes this cluster when binds
    // make room.
    let mut held_back = false;
    let mut granted_total = 0;
    for g in &groups {
        let current: Vec<&Machine> = live.iter().copied().filter(|m| in_group(m, g)).collect();
        let want = g.replicas as usize;
        let label = g.pool.clone().unwrap_or_else(|| "cp".into());
        if current.len() < want {
            let n = machines_to_create(g.role, &current, want, reads_nodes, control_plane_ready);
            let granted = ctx.intake.take(&ObjectRef::new(&name).within(&ns), n);
            held_back |= granted < n;
            granted_total += granted;
            for _ in 0..granted {
                let Some(idx) = (10..255).find(|i| !used.contains(i)) else {
                    // Nothing is made: the room granted goes back.
                    ctx.intake.not_made(granted_total);
                    return Err(
                        anyhow::anyhow!("no overlay addresses left in {}", overlay.subnet).into(),
                    );
                };
                used.insert(idx);
                let (ip, mac) = address(&overlay, idx);
                let mut labels = BTreeMap::from([
                    (LABEL_CLUSTER.to_owned(), name.clone()),
                    (LABEL_ROLE.to_owned(), g.role.as_str().to_owned()),
                ]);
                if let Some(p) = &g.pool {
                    labels.insert(LABEL_POOL.to_owned(), p.clone());
                }
                let machine_name = format!("{name}-{label}-{}", suffix());
                let mut m = Machine::new(
                    &machine_name,
                    MachineSpec {
                        cluster_name: name.clone(),
                        role: g.role,
                        pool: g.pool.clone(),
                        cpu: g.cpu,
                        memory: g.memory,
                        disk: g.disk,
                        image: g.image.clone().or_else(|| default_image.clone()),
                        host_name: None,
                        mac: Some(mac),
                        ip: Some(ip.clone()),
                        bootstrap_secret: Some(paddock_bootstrap::secret_name(&machine_name)),
                    },
                );
                m.metadata.labels = Some(labels);
                m.metadata.owner_references = Some(vec![owner.clone()]);
                // Held by the agent of its host until the VM is gone, and
                // by the workload loop until its Node is drained.
                let mut fins = vec![paddock_api::machine::VM_FINALIZER.to_owned()];
                if reads_nodes {
                    fins.push(paddock_api::machine::DRAIN_FINALIZER.into());
                }
                m.metadata.finalizers = Some(fins);
                to_make.push((m, format!("{machine_name} ({}, {ip})", g.role.as_str())));
            }
        } else if current.len() > want {
            for m in scale_down(&current, want) {
                if let Err(e) = remove_machine(
                    &ctx,
                    &machines,
                    &c,
                    m,
                    format!("scaling {label} down to {want}"),
                )
                .await
                {
                    ctx.intake.not_made(granted_total);
                    return Err(e);
                }
            }
        }
    }

    let mut created = Vec::new();
    let mut failed = None;
    let api = &machines;
    let mut results = futures::stream::iter(to_make)
        .map(|(m, what)| async move { (api.create(&PostParams::default(), &m).await, what) })
        .buffer_unordered(CREATES_IN_FLIGHT);
    while let Some((res, what)) = results.next().await {
        match res {
            Ok(made) => {
                ctx.expect(&uid, made.name_any(), true);
                created.push(what);
            }
            Err(e) => {
                ctx.intake.not_made(1);
                failed = failed.or(Some(e));
            }
        }
    }
    drop(results);
    machines_created(&ctx, &c, &created).await;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if !ctx.caught_up(&uid, &ctx.cached(&ns, &name)) {
        // Our own writes are not in the cache yet: count again when they are.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let mine = ctx.cached(&ns, &name);
    let live: Vec<Machine> = mine
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let pki = ctx
        .secrets
        .get(&ObjectRef::new(&format!("{name}-pki")).within(&ns));
    bootstrap::track_init_host(&ctx.client, &c, pki.as_deref().map(|p| &p.metadata), &live).await?;
    let bootstrapped = bootstrap::ensure_bootstrap(&ctx.client, &ctx.cfg, &c, &live, |s| {
        ctx.secrets.get(&ObjectRef::new(s).within(&ns)).is_some()
    })
    .await?;
    let made = bootstrapped.made;
    if made > 0 {
        events::record(
            &ctx.client,
            c.as_ref(),
            false,
            "BootstrapDataWritten",
            format!("bootstrap data for {made} machines"),
        )
        .await;
    }
    let ready_cp = live
        .iter()
        .filter(|m| m.spec.role == MachineRole::ControlPlane && machine_ready(m, reads_nodes))
        .count() as u32;
    let ready_w = live
        .iter()
        .filter(|m| m.spec.role == MachineRole::Worker && machine_ready(m, reads_nodes))
        .count() as u32;
    let want_w = c.spec.worker_replicas();
    let all = ready_cp == c.spec.control_plane.replicas
        && ready_w == want_w
        && live.len() as u32 == c.spec.control_plane.replicas + want_w;
    let unscheduled = live.iter().filter(|m| m.spec.host_name.is_none()).count();
    let (phase, why) = if let Some(w) = &bootstrapped.waiting {
        (ClusterPhase::Provisioning, w.clone())
    } else if all && reads_nodes {
        (ClusterPhase::Ready, "every node is Ready".to_owned())
    } else if all {
        (ClusterPhase::Ready, "every machine is ready".to_owned())
    } else if unscheduled > 0 && live.iter().all(|m| m.spec.host_name.is_none()) {
        (
            ClusterPhase::Pending,
            format!("{unscheduled} machines wait for a host"),
        )
    } else {
        let held = reads_nodes && want_w > 0 && !a_control_plane_is_ready(&live);
        (
            ClusterPhase::Provisioning,
            format!(
                "{} of {} {} ready{}",
                ready_cp + ready_w,
                c.spec.control_plane.replicas + want_w,
                if reads_nodes { "nodes" } else { "machines" },
                if held {
                    "; workers are made once a control plane is a Ready Node"
                } else {
                    ""
                }
            ),
        )
    };
    let was = c.status.as_ref().and_then(|s| s.phase);
    set_status(
        &clusters,
        &c,
        &ctx.cfg,
        Seen {
            phase,
            why: why.clone(),
            reads_nodes,
        },
        Some(overlay),
        &mine,
    )
    .await?;
    if was != Some(phase) && phase == ClusterPhase::Ready {
        events::record(&ctx.client, c.as_ref(), false, "Ready", why).await;
    }
    if bootstrapped.waiting.is_some() {
        // A host's return or removal is not watched here: look again soon.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if held_back {
        // Woken by the intake when there is room; this is the safety net.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // A change of the Cluster or of one of its Machines triggers a
    // reconcile, and what is waited for without one (a host) requeues
    // sooner above; this pass is only the safety net. At 30 s it was 333
    // reconciles a second at 10,000 clusters.
    Ok(Action::requeue(RESYNC))
}

/// What a deleting cluster waits for: the hosts whose agents have yet to
/// stop its VMs (the overlay is returned only after).
pub fn deleting_message(machines: &[Machine]) -> String {
    let hosts: std::collections::BTreeSet<&str> = machines
        .iter()
        .filter_map(|m| m.spec.host_name.as_deref())
        .collect();
    let n = machines.len();
    if hosts.is_empty() {
        return format!("deleting {n} machines");
    }
    let hosts: Vec<&str> = hosts.into_iter().collect();
    format!(
        "deleting {n} machines: waiting for the agents of {} to stop their VMs (a host that is gone for good is released by deleting its Host)",
        hosts.join(", ")
    )
}

/// What a reconcile concluded of a cluster.
struct Seen {
    phase: ClusterPhase,
    why: String,
    /// Readiness is the Nodes' (the workload loop reads them).
    reads_nodes: bool,
}

async fn set_status(
    api: &Api<Cluster>,
    c: &Cluster,
    cfg: &Config,
    seen: Seen,
    overlay: Option<OverlayStatus>,
    machines: &[Machine],
) -> Result<(), Error> {
    let Seen {
        phase,
        why,
        reads_nodes,
    } = seen;
    let (live, deleting): (Vec<&Machine>, Vec<&Machine>) = machines
        .iter()
        .partition(|m| m.metadata.deletion_timestamp.is_none());
    let deleting_machines = deleting.len() as u32;
    let old = c.status.clone().unwrap_or_default();
    let ready = phase == ClusterPhase::Ready;
    let prev = old.conditions.iter().find(|x| x.type_ == "Ready");
    let status_str = if ready { "True" } else { "False" };
    let since = match prev {
        Some(p) if p.status == status_str => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let st = ClusterStatus {
        phase: Some(phase),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status_str.into(),
            reason: format!("{phase:?}"),
            message: why,
            last_transition_time: since,
            observed_generation: c.metadata.generation,
        }],
        observed_generation: c.metadata.generation,
        overlay: overlay.clone().or(old.overlay.clone()),
        api_endpoint: Some(format!(
            "https://{}:{}",
            bootstrap::api_name(cfg, c),
            cfg.gateway_port
        )),
        ingress: overlay.as_ref().or(old.overlay.as_ref()).map(|o| {
            let slot = o.vni.saturating_sub(cfg.vni_base) as u16;
            let http = cfg.ingress_port_base.saturating_add(slot.saturating_mul(2));
            // The gateway owns address and backends; keep what it wrote.
            let old = old.ingress.clone();
            IngressStatus {
                address: old.as_ref().and_then(|o| o.address.clone()),
                http_port: http,
                https_port: http.saturating_add(1),
                backends: old.map(|o| o.backends).unwrap_or_default(),
            }
        }),
        // The gateway owns it; omitted from the merge patch, it is kept.
        initialization: None,
        control_plane_ready: live
            .iter()
            .filter(|m| m.spec.role == MachineRole::ControlPlane && machine_ready(m, reads_nodes))
            .count() as u32,
        nodes_ready: live
            .iter()
            .filter(|m| m.spec.role == MachineRole::Worker && machine_ready(m, reads_nodes))
            .count() as u32,
        deleting_machines,
        node_versions: live
            .iter()
            .filter_map(|m| m.status.as_ref()?.node.as_ref())
            .map(|n| n.kubelet_version.clone())
            .filter(|v| !v.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let same = old.phase == st.phase
        && old.observed_generation == st.observed_generation
        && old.control_plane_ready == st.control_plane_ready
        && old.nodes_ready == st.nodes_ready
        && old.deleting_machines == st.deleting_machines
        && old.node_versions == st.node_versions
        && old.overlay == st.overlay
        && old.api_endpoint == st.api_endpoint
        && old.ingress == st.ingress
        && old.conditions.first().map(|x| (&x.status, &x.message))
            == st.conditions.first().map(|x| (&x.status, &x.message));
    if !same {
        api.patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": st})),
        )
        .await?;
    }
    Ok(())
}

/// Exponential backoff per cluster: 0.5 s, 1 s, 2 s … up to 60 s.
/// Whether a reconcile failed on a write's resourceVersion precondition.
fn is_conflict(e: &Error) -> bool {
    e.0.chain().any(|c| {
        matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict")
    })
}

fn error_policy(c: Arc<Cluster>, e: &Error, ctx: Arc<Ctx>) -> Action {
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(c.uid().unwrap_or_default()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    if is_conflict(e) {
        // A write on a copy older than the object (the caches had yet to
        // show this controller's own last write): expected under optimistic
        // concurrency, and the next pass reads a newer copy. Soon, then
        // backing off if the conflicts go on.
        let delay = Duration::from_millis(100u64.saturating_mul(1 << n.min(6).saturating_sub(1)));
        tracing::debug!(cluster = %c.name_any(), error = %e, retry_in = ?delay, "write conflict; reconciling again");
        return Action::requeue(delay);
    }
    let delay = Duration::from_millis(500u64.saturating_mul(1 << n.min(7).saturating_sub(1)))
        .min(Duration::from_secs(60));
    tracing::warn!(cluster = %c.name_any(), error = %e, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_and_reset(c: Arc<Cluster>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let uid = c.uid().unwrap_or_default();
    let started = std::time::Instant::now();
    let res = reconcile(c, ctx.clone()).await;
    paddock_metrics::reconciled("cluster-controller", res.is_ok(), started.elapsed());
    if res.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&uid);
    }
    res
}

pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    let index: Arc<std::sync::RwLock<MachineIndex>> = Arc::default();
    let key = |m: &Machine| {
        (
            m.namespace().unwrap_or_default(),
            m.labels().get(LABEL_CLUSTER).cloned().unwrap_or_default(),
        )
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    // A Machine's change triggers its Cluster's reconcile only once the
    // index has it: a second watch (`owns`) could run the reconcile first,
    // on an index that still holds a deleted Machine, and the replacement
    // would wait for the next periodic pass.
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Cluster>>();
    // The watch tasks end with the controller.
    let mut watchers = paddock_watch::Watchers::default();
    let intake = Arc::new(Intake::default());
    {
        let index = index.clone();
        let intake = intake.clone();
        let mut stream = watcher::watcher(
            Api::<Machine>::all(client.clone()),
            watcher::Config::default(),
        )
        .modify(paddock_watch::lean::<Machine>)
        .default_backoff()
        .boxed();
        watchers.keep(tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut fresh: HashMap<(String, String), BTreeMap<String, Machine>> = HashMap::new();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                let Ok(mut idx) = index.write() else { return };
                let mut changed: Vec<(String, String)> = match &ev {
                    watcher::Event::Apply(m) | watcher::Event::Delete(m) => vec![key(m)],
                    _ => Vec::new(),
                };
                let mut woken = Vec::new();
                match ev {
                    watcher::Event::Apply(m) => {
                        let now = intake::waits(&m);
                        let old = idx.entry(key(&m)).or_default().insert(m.name_any(), m);
                        let was = old.as_ref().is_some_and(intake::waits);
                        woken = intake.seen(was, now, old.is_none());
                    }
                    watcher::Event::Delete(m) => {
                        if let Some(g) = idx.get_mut(&key(&m))
                            && let Some(old) = g.remove(&m.name_any())
                        {
                            woken = intake.seen(intake::waits(&old), false, false);
                        }
                    }
                    watcher::Event::Init => fresh.clear(),
                    watcher::Event::InitApply(m) => {
                        fresh.entry(key(&m)).or_default().insert(m.name_any(), m);
                    }
                    watcher::Event::InitDone => {
                        // After a relist, every cluster seen before or now
                        // may have changed (deletions in the gap included).
                        changed.extend(idx.keys().chain(fresh.keys()).cloned());
                        *idx = std::mem::take(&mut fresh);
                        let waiting = idx
                            .values()
                            .flat_map(BTreeMap::values)
                            .filter(|m| intake::waits(m))
                            .count();
                        woken = intake.recount(waiting);
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                drop(idx);
                for (ns, cluster) in changed.into_iter().filter(|(_, c)| !c.is_empty()) {
                    let _ = trigger_tx.send(ObjectRef::new(&cluster).within(&ns));
                }
                for c in woken {
                    let _ = trigger_tx.send(c);
                }
            }
        }));
    }
    // Never act on an empty cache: it would read as "no machines yet".
    if ready_rx.await.is_err() {
        tracing::error!("machine cache never became ready; cluster controller not started");
        return;
    }
    let secrets = watchers.store_selected(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels(LABEL_CLUSTER),
        Arc::default(),
    );
    let images = watchers.store(Api::<MachineImage>::all(client.clone()), Arc::default());
    if images.wait_until_ready().await.is_err() {
        tracing::error!("machine image cache never became ready; cluster controller not started");
        return;
    }
    let Some(pool) = overlay::Pool::watch(&client, &mut watchers).await else {
        tracing::error!("overlay claim cache never became ready; cluster controller not started");
        return;
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        machines: index,
        expect: Mutex::default(),
        failures: Mutex::default(),
        secrets,
        pool,
        images,
        intake,
    });
    let (reader, writer) = reflector::store();
    let clusters = watcher::watcher(
        Api::<Cluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .modify(paddock_watch::lean::<Cluster>)
    .default_backoff()
    .reflect(writer)
    .applied_objects();
    Controller::for_stream(clusters, reader)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(
            trigger_rx,
        ))
        .run(reconcile_and_reset, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn m(name: &str, created: i64, ready: bool) -> Machine {
        let mut m: Machine = serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "acme"},
            "spec": {"clusterName": "demo", "role": "worker", "cpu": 1, "memory": "1Gi", "disk": "1Gi"}
        }))
        .expect("machine");
        m.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_800_000_000 + created).expect("ts"),
        ));
        if ready {
            m.status = Some(
                serde_json::from_value(json!({"conditions": [{
                "type": "GuestReady", "status": "True", "reason": "r", "message": "",
                "lastTransitionTime": "2027-01-01T00:00:00Z"}]}))
                .expect("status"),
            );
        }
        m
    }

    #[test]
    fn scale_down_removes_not_ready_machines_first_then_the_newest() {
        let (a, b, c, d) = (
            m("a", 1, true),
            m("b", 2, true),
            m("c", 3, false),
            m("d", 4, true),
        );
        let all = [&a, &b, &c, &d];
        let names = |v: Vec<&Machine>| v.iter().map(|m| m.name_any()).collect::<Vec<_>>();
        assert_eq!(names(scale_down(&all, 3)), ["c"]);
        assert_eq!(names(scale_down(&all, 2)), ["c", "d"]);
        assert_eq!(names(scale_down(&all, 0)), ["c", "d", "b", "a"]);
        assert!(scale_down(&all, 4).is_empty());
        assert!(scale_down(&all, 9).is_empty());
    }

    #[test]
    fn control_planes_of_real_kubernetes_join_one_at_a_time() {
        let cp = MachineRole::ControlPlane;
        let node = |mut m: Machine, ready: bool| {
            let st = m.status.get_or_insert_with(Default::default);
            st.node =
                Some(serde_json::from_value(json!({"name": "n", "ready": ready})).expect("node"));
            m
        };
        let first = node(m("a", 1, true), true);
        let joining = node(m("b", 2, true), false);
        // Nothing yet: the first control plane alone.
        assert_eq!(machines_to_create(cp, &[], 3, true, false), 1);
        // The next only once every one there is a Ready Node.
        assert_eq!(machines_to_create(cp, &[&first], 3, true, false), 1);
        assert_eq!(
            machines_to_create(cp, &[&first, &joining], 3, true, false),
            0
        );
        let booting = m("c", 3, false);
        assert_eq!(
            machines_to_create(cp, &[&first, &booting], 3, true, false),
            0
        );
        assert_eq!(machines_to_create(cp, &[&first], 1, true, false), 0);
        // Stand-ins: all at once.
        assert_eq!(machines_to_create(cp, &[], 3, false, false), 3);
    }

    #[test]
    fn workers_of_real_kubernetes_wait_for_a_ready_control_plane() {
        let w = MachineRole::Worker;
        let joining = m("b", 2, true);
        // None before a control plane is a Ready Node, then all at once.
        assert_eq!(machines_to_create(w, &[], 3, true, false), 0);
        assert_eq!(machines_to_create(w, &[&joining], 4, true, true), 3);
        assert_eq!(machines_to_create(w, &[&joining], 1, true, true), 0);
        // Stand-ins have no Nodes to wait for.
        assert_eq!(machines_to_create(w, &[], 3, false, false), 3);
    }

    #[test]
    fn a_deleting_cluster_names_the_hosts_it_waits_for() {
        let mut x = m("x", 1, true);
        x.spec.host_name = Some("h3".into());
        let y = m("y", 2, true);
        let msg = deleting_message(&[x, y]);
        assert!(
            msg.starts_with("deleting 2 machines: waiting for the agents of h3"),
            "{msg}"
        );
        assert_eq!(deleting_message(&[m("z", 1, false)]), "deleting 1 machines");
    }
}
