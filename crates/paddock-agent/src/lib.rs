//! Paddock's host agent. It registers its `Host`, renews a `Lease` as
//! heartbeat, watches the Machines bound to it and converges the host to
//! them: per-cluster bridges and VXLAN devices, a tap and a QEMU VM per
//! Machine, and each Machine's status.

pub mod accel;
pub mod endpoint;
pub mod host;
pub mod hypervisor;
pub mod join;
pub mod jsonsock;
pub mod platform;
pub mod reconcile;
pub mod seed;
pub mod vm;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Api;
use paddock_api::host::Resources;
use paddock_api::{Cluster, Host, Machine, MachineImage};
use tokio::sync::Notify;

pub use accel::{Accel, AccelChoice};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub state_dir: PathBuf,
    pub qemu: PathBuf,
    pub accel: AccelChoice,
    /// A kernel to boot for the KVM probe (else a boot sector).
    pub probe_kernel: Option<PathBuf>,
    pub default_image: String,
    pub reserve: Resources,
    pub stop_grace: Duration,
    pub resync: Duration,
    pub heartbeat: Duration,
}

/// Forwards TCP connections on a loopback port to the management API's unix
/// socket; for labs whose hosts share the server's filesystem but not its
/// network. Returns the local address.
pub async fn forward_api_socket(socket: PathBuf) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the API forwarder")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            let socket = socket.clone();
            tokio::spawn(async move {
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(mut unix) => {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                    Err(e) => {
                        tracing::warn!(socket = %socket.display(), error = %e, "cannot reach the API socket")
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// What the agent drives: the hypervisor, the host network and the
/// management API. [`run`] makes the real ones; tests pass fakes.
pub struct Parts {
    pub hypervisor: Arc<dyn hypervisor::Hypervisor>,
    pub net: Arc<dyn paddock_net::HostNet>,
    pub platform: Arc<dyn platform::Platform>,
    /// The MTU of the overlays as VMs see them.
    pub overlay_mtu: u32,
}

/// Runs the agent on this host's QEMU and kernel until the process is
/// stopped, or until one of its tasks ends (an error says which and why;
/// VMs keep running and the next agent adopts them).
pub async fn run(client: kube::Client, cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
    let (accel, why) = accel::choose(
        cfg.accel,
        &cfg.qemu,
        cfg.probe_kernel.as_deref(),
        &cfg.state_dir,
    )
    .await;
    tracing::info!(accel = accel.as_str(), reason = %why, "accelerator chosen");
    let net = paddock_net::Net::connect().context("netlink")?;
    let underlay_mtu = net
        .underlay_mtu(cfg.underlay)
        .await
        .context("finding the underlay interface")?;
    let parts = Parts {
        hypervisor: Arc::new(hypervisor::Qemu {
            binary: cfg.qemu.clone(),
            accel,
        }),
        net: Arc::new(net),
        platform: Arc::new(platform::KubePlatform(client.clone())),
        overlay_mtu: underlay_mtu - paddock_net::VXLAN_OVERHEAD,
    };
    run_with(client, cfg, parts).await
}

/// Runs the agent on the given parts.
pub async fn run_with(client: kube::Client, cfg: AgentConfig, parts: Parts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("state dir {}", cfg.state_dir.display()))?;
    let accel = parts.hypervisor.accel();
    let overlay_mtu = parts.overlay_mtu;
    let notify = Arc::new(Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let world = reconcile::World {
        machines: watchers.store(Api::<Machine>::all(client.clone()), notify.clone()),
        hosts: watchers.store(Api::<Host>::all(client.clone()), notify.clone()),
        clusters: watchers.store(Api::<Cluster>::all(client.clone()), notify.clone()),
        images: watchers.store(Api::<MachineImage>::all(client.clone()), notify.clone()),
    };
    for (what, ready) in [
        ("machines", world.machines.wait_until_ready().await),
        ("hosts", world.hosts.wait_until_ready().await),
        ("clusters", world.clusters.wait_until_ready().await),
        ("images", world.images.wait_until_ready().await),
    ] {
        ready.with_context(|| format!("initial list of {what}"))?;
    }
    let settings = reconcile::Settings {
        host: cfg.name.clone(),
        underlay: cfg.underlay,
        state_dir: cfg.state_dir.clone(),
        default_image: cfg.default_image.clone(),
        stop_grace: cfg.stop_grace,
        overlay_mtu,
    };
    let r = Arc::new(reconcile::Reconciler::new(
        settings,
        world,
        parts.platform,
        parts.net,
        parts.hypervisor,
    ));
    let sock = cfg.state_dir.join("agent.sock");
    let report = host::HostReport {
        name: cfg.name.clone(),
        underlay: cfg.underlay,
        reserve: cfg.reserve.clone(),
        allocated: Resources::default(),
        endpoint: format!("unix://{}", sock.display()),
        accel: accel.as_str().into(),
    };
    // The Lease before the first report: a host that is Ready without one
    // reads as a host whose lease expired.
    if let Err(e) = host::renew_lease(&client, &cfg.name, lease_seconds(cfg.heartbeat)).await {
        tracing::warn!(error = %e, "cannot take the host's lease yet; the heartbeat tries again");
    }
    host::report(&client, &report)
        .await
        .context("registering the host")?;
    tracing::info!(host = %cfg.name, underlay = %cfg.underlay, overlay_mtu, "agent running");
    let allocated = Arc::new(std::sync::Mutex::new(Resources::default()));
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (r, sock) = (r.clone(), sock.clone());
        tasks.spawn(async move {
            endpoint::serve(&sock, r)
                .await
                .context("the agent endpoint failed")
        });
    }
    tasks.spawn(heartbeat(
        client.clone(),
        report,
        cfg.heartbeat,
        allocated.clone(),
    ));
    tasks.spawn(async move {
        loop {
            let pass = r.pass().await;
            paddock_metrics::agent_pass(pass.is_ok());
            match pass {
                Ok(a) => {
                    if let Ok(mut x) = allocated.lock() {
                        *x = a;
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "reconcile pass failed"),
            }
            tokio::select! {
                _ = notify.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
                _ = tokio::time::sleep(cfg.resync) => {}
            }
        }
    });
    // None of them returns while the agent is healthy.
    let ended = tasks.join_next().await;
    tasks.abort_all();
    drop(watchers);
    match ended {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) if e.is_panic() => anyhow::bail!("an agent task panicked: {e}"),
        _ => anyhow::bail!("an agent task ended"),
    }
}

/// A lease outlives three missed heartbeats.
fn lease_seconds(every: Duration) -> i32 {
    i32::try_from(every.as_secs().max(1) * 4).unwrap_or(40)
}

/// Renews the host's Lease and reports its status every `every`, on its own
/// task: a reconcile pass, however long it takes, never delays it.
async fn heartbeat(
    client: kube::Client,
    mut report: host::HostReport,
    every: Duration,
    allocated: Arc<std::sync::Mutex<Resources>>,
) -> anyhow::Result<()> {
    let lease_seconds = lease_seconds(every);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = host::renew_lease(&client, &report.name, lease_seconds).await {
            tracing::warn!(error = %e, "cannot renew lease");
        }
        if let Ok(a) = allocated.lock() {
            report.allocated = a.clone();
        }
        if let Err(e) = host::report(&client, &report).await {
            tracing::warn!(error = %e, "cannot report host status");
        }
    }
}
