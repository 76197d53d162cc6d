//! The gateway of the management plane.
//!
//! * One TLS port routes by SNI without terminating TLS: the management
//!   API's own names (and clients that send no name) to the management API,
//!   `<cluster>.<org>.<base-domain>` to a healthy control-plane VM of that
//!   cluster on port 6443, anything else is refused (`unrecognized_name`).
//! * Each cluster's overlay is joined from a network namespace of its own
//!   (`<prefix><vni>`) holding the overlay's gateway address on a VXLAN
//!   device whose UDP socket lives in the underlay namespace. Connections to
//!   a cluster's VMs are made from inside that namespace only, and nothing
//!   routes between namespaces, so no cluster can reach another through it.
//! * Inside each overlay, `<gateway>:6443` forwards to the control-plane VMs
//!   (the cluster's `controlPlaneEndpoint`).
//! * Per cluster, two management-plane ports (HTTP and HTTPS) forward to the
//!   workers' ingress node ports, to workers that pass a TCP health check.
//!
//! The reconcile loop is level-triggered: from the Clusters, Machines and
//! Hosts it computes the namespaces, devices, forwarding entries and
//! listeners there should be, makes what is missing and removes the rest.

mod forward;
pub mod sni;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use paddock_api::cluster::IngressBackend;
use paddock_api::{Cluster, Host, Machine, MachineRole};
use paddock_lb::{Frontend, LoadBalancer};
use paddock_net::{FdbEntry, Mac, Net};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use forward::{Health, Pool};

/// The port of a cluster's Kubernetes API on its control-plane VMs.
pub const API_PORT: u16 = 6443;

/// How the gateway runs.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The TLS port that routes by SNI.
    pub listen: SocketAddr,
    /// Names routed to the management API.
    pub management_names: Vec<String>,
    /// Where the management API listens.
    pub management_addr: SocketAddr,
    pub base_domain: String,
    /// The management plane's underlay address: the overlays' VTEP.
    pub vtep: Ipv4Addr,
    /// Namespace holding the underlay (the VXLAN sockets); this one if unset.
    pub underlay_netns: Option<PathBuf>,
    /// Names of the per-cluster namespaces start with this.
    pub netns_prefix: String,
    pub overlay_mtu: u32,
    /// Address the ingress ports bind.
    pub ingress_bind: IpAddr,
    /// Address written to the clusters' status for the ingress ports.
    pub ingress_advertise: String,
    /// Between health checks of the VMs.
    pub health_every: Duration,
    /// Between full reconcile passes (changes also trigger one).
    pub resync: Duration,
    /// A load balancer to keep in step with the clusters' ingress.
    pub load_balancer: Option<Arc<dyn LoadBalancer>>,
}

/// Where SNI names lead.
#[derive(Clone)]
struct ClusterRoute {
    /// `<org>/<name>`, as the metrics name it.
    cluster: String,
    alive: tokio::sync::watch::Receiver<()>,
    netns: PathBuf,
    control_plane: Arc<Pool>,
    health: Arc<Health>,
}

type Routes = Arc<RwLock<HashMap<String, ClusterRoute>>>;

/// One cluster's presence on the gateway.
struct Joined {
    vni: u32,
    netns_name: String,
    netns: PathBuf,
    net: Net,
    control_plane: Arc<Pool>,
    http: Arc<Pool>,
    https: Arc<Pool>,
    health: Arc<Health>,
    /// Dropped with the cluster's presence: its connections end then.
    alive: tokio::sync::watch::Sender<()>,
    /// Listener and checker tasks, by what they serve.
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

struct World {
    clusters: Store<Cluster>,
    machines: Store<Machine>,
    hosts: Store<Host>,
}

/// Aborts its tasks when dropped: the gateway's background work ends with
/// the future that runs it.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn reflect<K: paddock_watch::Watchable>(
    api: Api<K>,
    notify: Arc<tokio::sync::Notify>,
    tasks: &mut Tasks,
) -> Store<K> {
    let (store, task) = paddock_watch::store(api, notify);
    tasks.0.push(task);
    store
}

/// Runs the gateway until the future is dropped.
pub async fn run(client: kube::Client, cfg: GatewayConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind(cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, vtep = %cfg.vtep, "gateway listening");
    let routes: Routes = Arc::default();
    let mut tasks = Tasks::default();
    tasks.0.push(tokio::spawn(serve_sni(
        listener,
        cfg.clone(),
        routes.clone(),
    )));
    let notify = Arc::new(tokio::sync::Notify::new());
    let world = World {
        clusters: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        machines: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
        hosts: reflect(Api::all(client.clone()), notify.clone(), &mut tasks),
    };
    // Never act on empty caches: that reads as "no clusters", and would
    // tear down every cluster's presence on a restart.
    for ready in [
        world.clusters.wait_until_ready().await,
        world.machines.wait_until_ready().await,
        world.hosts.wait_until_ready().await,
    ] {
        ready.map_err(|e| anyhow::anyhow!("gateway caches: {e}"))?;
    }
    let underlay = match &cfg.underlay_netns {
        Some(p) => Net::connect_in(p)?,
        None => Net::connect()?,
    };
    let mut joined: HashMap<u32, Joined> = HashMap::new();
    loop {
        if let Err(e) = pass(&client, &cfg, &world, &underlay, &mut joined, &routes).await {
            tracing::warn!(error = format!("{e:#}"), "gateway pass failed");
        }
        tokio::select! {
            _ = notify.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep(cfg.resync) => {}
        }
    }
}

fn ip_of(m: &Machine) -> Option<Ipv4Addr> {
    m.spec.ip.as_deref()?.split('/').next()?.parse().ok()
}

/// One reconcile pass over every cluster.
async fn pass(
    client: &kube::Client,
    cfg: &Arc<GatewayConfig>,
    world: &World,
    underlay: &Net,
    joined: &mut HashMap<u32, Joined>,
    routes: &Routes,
) -> anyhow::Result<()> {
    let clusters: Vec<Arc<Cluster>> = world
        .clusters
        .state()
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter(|c| c.status.as_ref().and_then(|s| s.overlay.as_ref()).is_some())
        .collect();
    // Grouped once per pass: each cluster then reads its own Machines, and
    // a host's VTEP is one lookup.
    let machines = world.machines.state();
    let mut by_cluster: HashMap<(String, &str), Vec<&Arc<Machine>>> = HashMap::new();
    for m in machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
    {
        by_cluster
            .entry((
                m.namespace().unwrap_or_default(),
                m.spec.cluster_name.as_str(),
            ))
            .or_default()
            .push(m);
    }
    let hosts = world.hosts.state();
    let vteps: HashMap<String, Option<Ipv4Addr>> =
        hosts.iter().map(|h| (h.name_any(), h.vtep())).collect();
    let vtep_of = |h: &str| -> Option<Ipv4Addr> { vteps.get(h).copied().flatten() };
    let mut new_routes = HashMap::new();
    let mut frontends = Vec::new();
    let mut wanted_vnis = BTreeSet::new();
    for c in &clusters {
        let Some(overlay) = c.status.as_ref().and_then(|s| s.overlay.clone()) else {
            continue;
        };
        let ns = c.namespace().unwrap_or_default();
        let name = c.name_any();
        if !wanted_vnis.insert(overlay.vni) {
            tracing::warn!(cluster = %name, org = %ns, vni = overlay.vni, "another cluster has this overlay; not joining it twice");
            continue;
        }
        let mine: &[&Arc<Machine>] = by_cluster
            .get(&(ns.clone(), name.as_str()))
            .map_or(&[], Vec::as_slice);
        let j = match join(cfg, underlay, &overlay, joined).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(cluster = %name, org = %ns, error = format!("{e:#}"), "cannot join overlay");
                continue;
            }
        };
        // Forwarding: every host that carries the cluster, every VM's MAC.
        let mut fdb = BTreeSet::new();
        for m in mine {
            let Some(dst) = m.spec.host_name.as_deref().and_then(vtep_of) else {
                continue;
            };
            fdb.insert(FdbEntry {
                mac: Mac::ZERO,
                dst,
            });
            if let Some(mac) = m.spec.mac.as_deref().and_then(|s| s.parse::<Mac>().ok()) {
                fdb.insert(FdbEntry { mac, dst });
            }
        }
        let dev = paddock_net::vxlan_name(overlay.vni);
        let synced = match j.net.link(&dev).await {
            Ok(Some(l)) => j.net.sync_vxlan_fdb(&dev, l.index, &fdb).await,
            Ok(None) => Err(paddock_net::NetError::Missing(dev.clone())),
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            tracing::warn!(cluster = %name, org = %ns, error = format!("{:#}", anyhow::Error::new(e)), "cannot program the overlay's forwarding");
            continue;
        }
        // Backends.
        let spec_ing = &c.spec.ingress;
        let cps: Vec<SocketAddr> = mine
            .iter()
            .filter(|m| m.spec.role == MachineRole::ControlPlane)
            .filter_map(|m| Some(SocketAddr::new(ip_of(m)?.into(), API_PORT)))
            .collect();
        let workers: Vec<(&Arc<Machine>, Ipv4Addr)> = mine
            .iter()
            .filter(|m| m.spec.role == MachineRole::Worker)
            .filter_map(|m| Some((*m, ip_of(m)?)))
            .collect();
        // The first time a control plane answers, the cluster has
        // initialized: recorded once, for the cluster controller.
        let initialized = c
            .status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .is_some_and(|i| i.control_plane_initialized);
        if !initialized && cps.iter().any(|a| j.health.healthy(a)) {
            let api: Api<Cluster> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"status": {"initialization": {"controlPlaneInitialized": true}}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(cluster = %name, org = %ns, "control plane initialized"),
                Err(e) => {
                    tracing::warn!(cluster = %name, error = %e, "cannot write initialization status");
                }
            }
        }
        j.control_plane.set(cps);
        j.http.set(
            workers
                .iter()
                .map(|(_, ip)| SocketAddr::new((*ip).into(), spec_ing.http_node_port))
                .collect(),
        );
        j.https.set(
            workers
                .iter()
                .map(|(_, ip)| SocketAddr::new((*ip).into(), spec_ing.https_node_port))
                .collect(),
        );
        let Ok(gw) = overlay.gateway.parse::<Ipv4Addr>() else {
            tracing::warn!(cluster = %name, org = %ns, gateway = %overlay.gateway, "overlay gateway is not an IPv4 address");
            continue;
        };
        let (netns, cp, health) = (j.netns.clone(), j.control_plane.clone(), j.health.clone());
        let alive = j.alive.subscribe();
        let label = format!("{ns}/{name}");
        ensure_task(&mut j.tasks, j.vni, "api", || {
            let l = forward::listen_in(&netns, SocketAddr::new(gw.into(), API_PORT))?;
            Ok(tokio::spawn(forward::serve_pool(
                l,
                netns.clone(),
                cp.clone(),
                health.clone(),
                alive.clone(),
                label.clone(),
            )))
        });
        let pools = vec![j.control_plane.clone(), j.http.clone(), j.https.clone()];
        ensure_task(&mut j.tasks, j.vni, "health", || {
            Ok(tokio::spawn(forward::check_loop(
                netns.clone(),
                pools,
                health.clone(),
                cfg.health_every,
            )))
        });
        let ingress = c.status.as_ref().and_then(|s| s.ingress.clone());
        if let Some(ing) = &ingress {
            for (what, port, pool) in [
                ("http", ing.http_port, j.http.clone()),
                ("https", ing.https_port, j.https.clone()),
            ] {
                let key = format!("ingress-{what}-{port}");
                let (ns_path, health) = (j.netns.clone(), j.health.clone());
                let bind = SocketAddr::new(cfg.ingress_bind, port);
                if !j.tasks.contains_key(&key) {
                    j.tasks.retain(|k, t| {
                        let stale = k.starts_with(&format!("ingress-{what}-"));
                        if stale {
                            t.abort();
                        }
                        !stale
                    });
                }
                ensure_task(&mut j.tasks, j.vni, &key, || {
                    let std = std::net::TcpListener::bind(bind)?;
                    std.set_nonblocking(true)?;
                    let l = TcpListener::from_std(std)?;
                    tracing::info!(cluster = %name, org = %ns, %bind, what, "ingress port open");
                    Ok(tokio::spawn(forward::serve_pool(
                        l,
                        ns_path,
                        pool,
                        health,
                        alive.clone(),
                        label.clone(),
                    )))
                });
            }
            // What the health checks see, in the cluster's status.
            let backends: Vec<IngressBackend> = workers
                .iter()
                .map(|(m, ip)| IngressBackend {
                    machine: m.name_any(),
                    ip: ip.to_string(),
                    healthy: j
                        .health
                        .healthy(&SocketAddr::new((*ip).into(), spec_ing.http_node_port)),
                    https_healthy: j
                        .health
                        .healthy(&SocketAddr::new((*ip).into(), spec_ing.https_node_port)),
                })
                .collect();
            if ing.address.as_deref() != Some(cfg.ingress_advertise.as_str())
                || ing.backends != backends
            {
                let api: Api<Cluster> = Api::namespaced(client.clone(), &ns);
                let patch = json!({"status": {"ingress": {
                    "address": cfg.ingress_advertise,
                    "backends": backends,
                }}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(cluster = %name, error = %e, "cannot write ingress status");
                }
            }
            frontends.push(Frontend {
                name: format!("{ns}-{name}"),
                gateway_address: cfg.ingress_advertise.clone(),
                http_port: ing.http_port,
                https_port: ing.https_port,
            });
        }
        new_routes.insert(
            format!("{name}.{ns}.{}", cfg.base_domain).to_ascii_lowercase(),
            ClusterRoute {
                cluster: format!("{ns}/{name}"),
                alive: j.alive.subscribe(),
                netns: j.netns.clone(),
                control_plane: j.control_plane.clone(),
                health: j.health.clone(),
            },
        );
    }
    if let Ok(mut r) = routes.write() {
        *r = new_routes;
    }

    // Whatever no cluster wants anymore.
    let gone: Vec<u32> = joined
        .keys()
        .filter(|v| !wanted_vnis.contains(v))
        .copied()
        .collect();
    for vni in gone {
        if let Some(j) = joined.remove(&vni) {
            leave(j).await;
        }
    }
    for name in paddock_net::netns::list(&cfg.netns_prefix) {
        let vni = name
            .strip_prefix(&cfg.netns_prefix)
            .and_then(|v| v.parse::<u32>().ok());
        if vni.is_some_and(|v| !joined.contains_key(&v))
            && let Err(e) = paddock_net::netns::remove(&name)
        {
            tracing::warn!(netns = %name, error = %e, "cannot remove stale namespace");
        }
    }
    if let Some(lb) = &cfg.load_balancer
        && let Err(e) = lb.sync(&frontends).await
    {
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::new(e)),
            "cannot update the load balancer"
        );
    }
    Ok(())
}

/// Starts the task `key` of a cluster unless it runs.
fn ensure_task(
    tasks: &mut HashMap<String, JoinHandle<()>>,
    vni: u32,
    key: &str,
    start: impl FnOnce() -> std::io::Result<JoinHandle<()>>,
) {
    if tasks.get(key).is_some_and(|t| !t.is_finished()) {
        return;
    }
    match start() {
        Ok(t) => {
            tasks.insert(key.to_owned(), t);
        }
        Err(e) => tracing::warn!(vni, task = key, error = %e, "cannot start"),
    }
}

/// The cluster's namespace, VXLAN device and address, made if missing.
async fn join<'a>(
    cfg: &GatewayConfig,
    underlay: &Net,
    overlay: &paddock_api::cluster::OverlayStatus,
    joined: &'a mut HashMap<u32, Joined>,
) -> anyhow::Result<&'a mut Joined> {
    let vni = overlay.vni;
    let netns_name = format!("{}{vni}", cfg.netns_prefix);
    if let std::collections::hash_map::Entry::Vacant(slot) = joined.entry(vni) {
        let netns = paddock_net::netns::ensure(&netns_name)?;
        let net = Net::connect_in(&netns)?;
        net.set_up("lo").await?;
        slot.insert(Joined {
            vni,
            netns_name: netns_name.clone(),
            netns,
            net,
            control_plane: Arc::default(),
            http: Arc::default(),
            https: Arc::default(),
            health: Arc::default(),
            alive: tokio::sync::watch::channel(()).0,
            tasks: HashMap::new(),
        });
    }
    let j = joined
        .get_mut(&vni)
        .ok_or_else(|| anyhow::anyhow!("overlay {vni} vanished"))?;
    let dev = paddock_net::vxlan_name(vni);
    if j.net.link(&dev).await?.is_none() {
        let mac: Mac = overlay
            .gateway_mac
            .clone()
            .unwrap_or_else(|| {
                paddock_api::cluster::overlay_mac(vni, paddock_api::cluster::GATEWAY_HOST_INDEX)
            })
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let target = std::fs::File::open(&j.netns)?;
        underlay
            .create_vxlan_in(&dev, vni, cfg.vtep, mac, cfg.overlay_mtu, &target)
            .await?;
    }
    let gw: Ipv4Addr = overlay.gateway.parse()?;
    let prefix = overlay
        .subnet
        .split('/')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(24);
    j.net.ensure_address(&dev, gw, prefix).await?;
    Ok(j)
}

/// Stops the cluster's listeners and removes its device and namespace.
async fn leave(j: Joined) {
    let dev = paddock_net::vxlan_name(j.vni);
    if let Err(e) = j.net.delete(&dev).await {
        tracing::warn!(vni = j.vni, error = %e, "cannot delete gateway vxlan");
    }
    let name = j.netns_name.clone();
    drop(j);
    if let Err(e) = paddock_net::netns::remove(&name) {
        tracing::warn!(netns = %name, error = %e, "cannot remove namespace");
    }
}

async fn serve_sni(listener: TcpListener, cfg: Arc<GatewayConfig>, routes: Routes) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                forward::accept_failed(&e).await;
                continue;
            }
        };
        let (cfg, routes) = (cfg.clone(), routes.clone());
        tokio::spawn(async move {
            let hello = match sni::read_hello(&mut client).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "no ClientHello");
                    return;
                }
            };
            let name = hello.server_name.clone();
            let management = match &name {
                None => true,
                Some(n) => cfg
                    .management_names
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(n)),
            };
            if management {
                match tokio::net::TcpStream::connect(cfg.management_addr).await {
                    Ok(up) => forward::splice(client, up, &hello.bytes, "management").await,
                    Err(e) => tracing::warn!(error = %e, "management API unreachable"),
                }
                return;
            }
            let route = name
                .as_ref()
                .and_then(|n| routes.read().ok()?.get(n).cloned());
            let Some(route) = route else {
                tracing::info!(%peer, name = ?name, "refused: no cluster by that name");
                sni::refuse(client).await;
                return;
            };
            let forward = async {
                match forward::dial(&route.netns, &route.control_plane, &route.health).await {
                    Ok(up) => forward::splice(client, up, &hello.bytes, &route.cluster).await,
                    Err(e) => {
                        tracing::info!(%peer, name = ?name, error = %e, "no control plane answers");
                    }
                }
            };
            tokio::select! {
                _ = forward => {}
                _ = forward::ended(route.alive.clone()) => {}
            }
        });
    }
}
