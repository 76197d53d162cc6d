//! `paddock`: the one binary. `paddock server` runs the management plane;
//! the other subcommands are the user's verbs against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod admin;
mod dev;
mod labbmc;
mod monitoring;
mod netboot;
mod store_args;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "paddock",
    version,
    about = "Self-service Kubernetes clusters on your own racks"
)]
struct Cli {
    #[command(flatten)]
    global: paddock_cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the management plane: API server, store and controllers.
    Server(Box<ServerArgs>),
    /// Run the host agent: this host's Machines as QEMU VMs on VXLAN overlays.
    Agent(AgentArgs),
    /// A whole lab on this machine (root): server, hosts in network namespaces, dev image.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Add a user to a server's data directory (a running server picks it
    /// up) and print a kubeconfig for them.
    AddUser(AddUserArgs),
    /// Remove a user's tokens from a server's data directory: a running
    /// server refuses them within a second (and ends their console sessions).
    RevokeUser(RevokeUserArgs),
    /// Add the credential of a host's agent to a server's data directory and
    /// print its kubeconfig: it may act only for that host (its Host, Lease,
    /// Machines' status and their bootstrap Secrets).
    AddHost(AddHostArgs),
    /// Backups of the management plane and their restore (administrators).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// The monitoring Paddock ships: Prometheus' configuration, alert rules
    /// and Grafana dashboards.
    #[command(subcommand)]
    Monitoring(MonitoringCommand),
    #[command(flatten)]
    User(paddock_cli::Command),
}

#[derive(Subcommand)]
enum MonitoringCommand {
    /// Write prometheus.yml, alerts.yml (with its promtool tests) and the
    /// Grafana dashboards into DIR.
    Write {
        dir: PathBuf,
        /// The management API as host:port (repeat for each server).
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
        /// The platform CA (the server data directory's pki/ca.crt).
        #[arg(long)]
        ca_file: PathBuf,
        /// A file holding the token of a user in group system:monitoring
        /// (`paddock add-user prometheus --group system:monitoring`).
        #[arg(long)]
        token_file: PathBuf,
        /// Scrape and rule evaluation interval, in seconds.
        #[arg(long, default_value_t = 15)]
        interval: u32,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start the lab in the background (idempotent); returns when it is ready.
    Up {
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Where the lab keeps its state and logs.
        #[arg(long, default_value = "/var/lib/paddock-dev")]
        data_dir: PathBuf,
        /// Where the dev node image is built and cached.
        #[arg(long, default_value = "/var/cache/paddock/dev-image")]
        image_dir: PathBuf,
        /// A Kubernetes node image (scripts/build-kube-node-image.sh) to
        /// register as MachineImage kube-<version>: clusters that name no
        /// version then run it.
        #[arg(long)]
        kube_image: Option<PathBuf>,
        /// A highly available management plane: three servers on a
        /// three-member etcd, HAProxy in front (needs the etcd binary:
        /// scripts/build-node-binaries.sh /var/cache/paddock/node-bin etcd).
        #[arg(long)]
        ha: bool,
        /// Also N powered-off "bare-metal" machines (bm-1…bm-N): QEMU VMs
        /// with blank disks on the fabric, behind the lab's virtual BMC,
        /// registered as Hosts by their BMC and boot MAC, so that they
        /// netboot the host image and join (minutes under TCG).
        #[arg(long, default_value_t = 0)]
        bare_metal: usize,
        /// Memory of each bare-metal machine, in MiB.
        #[arg(long, default_value_t = 4096)]
        bare_metal_memory: u32,
        /// Also Debian's Prometheus on 127.0.0.1:19090, scraping the lab
        /// with the shipped rules (`paddock monitoring write`).
        #[arg(long)]
        monitoring: bool,
    },
    /// The lab's virtual BMC (run by `dev up --bare-metal`): Redfish on
    /// loopback for the lab's bare-metal machines.
    #[command(hide = true)]
    Bmc {
        #[arg(long, default_value = "/var/lib/paddock-dev")]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        machines: usize,
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// The BMC password is read from this file (user `admin`).
        #[arg(long)]
        password_file: PathBuf,
    },
    /// Stop and remove all of the lab (idempotent).
    Down {
        #[arg(long, default_value = "/var/lib/paddock-dev")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, certificates and admin kubeconfig live.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address and port to serve the API on (TLS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 30, hide = true)]
    bookmark_seconds: u64,
    /// Also serve the API on this unix socket (lab hosts in other network namespaces).
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// Seconds a host may be NotReady before its Machines are replaced elsewhere.
    #[arg(long, default_value_t = 60)]
    host_grace_seconds: u64,
    /// First VNI of the overlay pool.
    #[arg(long, default_value_t = 1000)]
    vni_base: u32,
    /// Number of overlays (VNI and /24) in the pool.
    #[arg(long, default_value_t = 4096)]
    vni_count: u32,
    /// First /24 of the overlay subnet pool.
    #[arg(long, default_value = "10.64.0.0")]
    subnet_base: std::net::Ipv4Addr,
    /// How many times its CPUs a host may be committed.
    #[arg(long, default_value_t = 4.0)]
    cpu_overcommit: f64,
    /// Pack workers onto few hosts instead of spreading them.
    #[arg(long)]
    pack_workers: bool,
    /// Run only the API, no controllers.
    #[arg(long, hide = true)]
    no_controllers: bool,
    /// Workload clusters are reached as `<cluster>.<org>.<base-domain>`.
    #[arg(long, default_value = "paddock.local")]
    base_domain: String,
    /// URL where users reach the gateway, written into cluster kubeconfigs
    /// (default: https://<gateway listen address>).
    #[arg(long)]
    gateway_url: Option<String>,
    /// Longest validity of an issued cluster kubeconfig, such as 24h.
    #[arg(long, default_value = "24h")]
    max_kubeconfig_ttl: String,
    /// Run the gateway on this address (TLS, routed by SNI): the clusters'
    /// APIs, and the management API under its own name.
    #[arg(long)]
    gateway_listen: Option<SocketAddr>,
    /// The management plane's underlay address: where the gateway joins the
    /// clusters' overlays (required with --gateway-listen).
    #[arg(long, requires = "gateway_listen")]
    gateway_vtep: Option<std::net::Ipv4Addr>,
    /// Network namespace (name under /run/netns, or a path) that holds the
    /// underlay address, when it is not this one.
    #[arg(long, requires = "gateway_listen")]
    gateway_underlay_netns: Option<String>,
    /// Serve the iPXE binaries over TFTP on this address (the PXE network's
    /// interface, port 69), to machines that netboot.
    #[arg(long)]
    tftp_listen: Option<SocketAddr>,
    /// The directory TFTP serves, read-only (Debian's `ipxe` package puts
    /// undionly.kpxe and ipxe.efi here).
    #[arg(long, default_value = "/usr/lib/ipxe", requires = "tftp_listen")]
    tftp_root: PathBuf,
    /// This server's address on the PXE network: runs DHCP (on
    /// --netboot-interface) and the netboot HTTP endpoint there, so that
    /// registered bare-metal hosts boot the host image and join.
    #[arg(long, requires = "netboot_interface")]
    netboot_address: Option<std::net::Ipv4Addr>,
    /// The PXE network's interface.
    #[arg(long, requires = "netboot_address")]
    netboot_interface: Option<String>,
    /// Network namespace (name under /run/netns, or a path) that holds the
    /// PXE network's interface, when it is not this one; the API is then
    /// served there too, on the --listen port.
    #[arg(long, requires = "netboot_address")]
    netboot_netns: Option<String>,
    /// Lease addresses from FIRST-LAST (a full DHCP server for the PXE
    /// network); without it, proxyDHCP beside the site's DHCP server.
    #[arg(long, requires = "netboot_address")]
    dhcp_range: Option<String>,
    #[arg(long, default_value = "255.255.255.0", requires = "dhcp_range")]
    dhcp_netmask: std::net::Ipv4Addr,
    #[arg(long, requires = "dhcp_range")]
    dhcp_router: Option<std::net::Ipv4Addr>,
    /// Port of the netboot HTTP endpoint (iPXE scripts, the host image).
    #[arg(long, default_value_t = 8080)]
    netboot_http_port: u16,
    /// The host image the netboot endpoint serves (vmlinuz, initrd.img;
    /// scripts/build-host-image.sh).
    #[arg(long, requires = "netboot_address")]
    netboot_image: Option<PathBuf>,
    /// Extra kernel command line for the host image.
    #[arg(long, default_value = "console=ttyS0")]
    netboot_cmdline: String,
    /// How long a drain waits for a deleted Machine's pods to leave (a
    /// PodDisruptionBudget may hold them) before its VM is stopped anyway.
    #[arg(long, default_value_t = 300)]
    drain_timeout_seconds: u64,
    /// Prefix of the gateway's per-cluster network namespaces.
    #[arg(long, default_value = "paddock-gw-")]
    gateway_netns_prefix: String,
    /// Address the clusters' ingress ports bind.
    #[arg(long, default_value = "0.0.0.0")]
    ingress_bind: std::net::IpAddr,
    /// Address the load balancer uses to reach the ingress ports (default:
    /// --ingress-bind, or the VTEP when that is 0.0.0.0).
    #[arg(long)]
    ingress_advertise: Option<String>,
    /// First ingress port; each cluster takes two (HTTP, HTTPS).
    #[arg(long, default_value_t = 20000)]
    ingress_port_base: u16,
    /// MTU of the overlays inside the VMs (underlay MTU minus 50).
    #[arg(long, default_value_t = 1450)]
    overlay_mtu: u32,
    /// Keep a HAProxy configuration for the clusters' ingress in this file.
    #[arg(long)]
    haproxy_config: Option<PathBuf>,
    /// Address the HAProxy frontends bind.
    #[arg(long, default_value = "0.0.0.0", requires = "haproxy_config")]
    haproxy_bind: String,
    /// Command that reloads HAProxy after the file changed.
    #[arg(long, requires = "haproxy_config")]
    haproxy_reload: Option<String>,
    /// File holding the 32-byte key that seals Secrets at rest (default
    /// `<data-dir>/secrets.key`, made on first start).
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
    #[command(flatten)]
    store: store_args::StoreArgs,
    /// This server's name in the leader election on etcd (default: the
    /// host name and a random part; unique per server).
    #[arg(long)]
    leader_identity: Option<String>,
    /// Seconds a leader's Lease lasts unrenewed: how long a dead leader's
    /// loops go unrun before another server takes over.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=300))]
    leader_lease_seconds: u64,
}

#[derive(clap::Args)]
struct AddHostArgs {
    /// The host's name, as its agent's `--name`.
    name: String,
    /// Write the kubeconfig here (mode 0600) instead of printing it.
    #[arg(long)]
    output_file: Option<PathBuf>,
    /// The server's data directory.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AddUserArgs {
    /// The user's name (their identity in the API and the CN of the
    /// cluster certificates they are issued).
    name: String,
    /// Organization the user may work in (repeatable).
    #[arg(long = "org")]
    orgs: Vec<String>,
    /// Extra group (repeatable); `system:masters` makes an administrator.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How long the token works (such as 8h or 30d); for ever when unset.
    #[arg(long)]
    ttl: Option<String>,
    /// The server's data directory.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RevokeUserArgs {
    /// The user whose tokens go.
    name: String,
    /// The server's data directory.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// URL of the management API (else the kubeconfig's).
    #[arg(long)]
    server: Option<String>,
    /// Kubeconfig with the agent's credentials.
    #[arg(long, env = "PADDOCK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Bearer token (instead of the kubeconfig's credentials).
    #[arg(long, env = "PADDOCK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Reach the API through this unix socket (a lab host in its own network namespace).
    #[arg(long, conflicts_with = "server")]
    api_socket: Option<PathBuf>,
    /// Join by netboot: take the join token, the API's and the netboot
    /// endpoint's URLs and the CA's hash from the kernel command line
    /// (`paddock.join=`, `paddock.api=`, `paddock.netboot=`,
    /// `paddock.ca-sha256=`, as Paddock's iPXE script sets them), exchange
    /// the token for this host's credential and keep that in
    /// `<state-dir>/host.kubeconfig` (used as is when it is already there).
    #[arg(long, conflicts_with_all = ["kubeconfig", "token", "api_socket", "server"])]
    join_cmdline: bool,
    /// Name of this host (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Underlay address: this host's VTEP.
    #[arg(long)]
    underlay_ip: std::net::Ipv4Addr,
    /// Where VM directories live.
    #[arg(long, default_value = "/var/lib/paddock/agent")]
    state_dir: PathBuf,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Accelerator: probe KVM and fall back to TCG (auto), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    accel: paddock_agent::AccelChoice,
    /// Kernel to boot for the KVM probe.
    #[arg(long)]
    probe_kernel: Option<PathBuf>,
    /// MachineImage for Machines that name none.
    #[arg(long, default_value = "dev")]
    default_image: String,
    /// vCPUs kept back for the host.
    #[arg(long, default_value_t = 0)]
    reserve_cpu: u32,
    /// Memory kept back for the host.
    #[arg(long, default_value = "512Mi")]
    reserve_memory: paddock_api::Memory,
    /// Seconds a VM gets to power off before it is stopped hard.
    #[arg(long, default_value_t = 10)]
    stop_grace: u64,
    /// Seconds between heartbeats (the lease lasts four).
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn add_host(a: AddHostArgs) -> anyhow::Result<()> {
    let mut errs = Vec::new();
    // As a Host's name: a DNS subdomain.
    paddock_api::validation::check_dns_subdomain("name", &a.name, &mut errs);
    if let Some(e) = errs.first() {
        anyhow::bail!("invalid host {e}");
    }
    let dir = a.data_dir.unwrap_or_else(paddock_cli::default_data_dir);
    let kc = paddock_apiserver::bootstrap::add_host(&dir, &a.name)?;
    match a.output_file {
        Some(path) => paddock_apiserver::bootstrap::write_private(&path, kc.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{kc}"),
    }
    Ok(())
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_tracing();
    let last_port = u32::from(args.ingress_port_base) + 2 * args.vni_count;
    if last_port > 65536 {
        anyhow::bail!(
            "--ingress-port-base {} leaves no room for 2 ports per overlay ({} overlays, --vni-count): ports would run to {last_port}",
            args.ingress_port_base,
            args.vni_count
        );
    }
    let store = args.store.config()?;
    let data_dir = args.data_dir.unwrap_or_else(paddock_cli::default_data_dir);
    let mut config = paddock_apiserver::ServerConfig::new(data_dir, args.listen);
    config.store = store;
    config.election = Some(paddock_apiserver::leader::ElectionConfig::with_lease(
        args.leader_identity
            .clone()
            .unwrap_or_else(paddock_apiserver::default_identity),
        Duration::from_secs(args.leader_lease_seconds),
    ));
    config.sans = args.sans.clone();
    if let Some(a) = args.netboot_address {
        config.sans.push(a.to_string());
    }
    let management_name = format!("api.{}", args.base_domain);
    config.sans.push(management_name.clone());
    config.bookmark_every = Duration::from_secs(args.bookmark_seconds.max(1));
    config.unix_socket = args.unix_socket;
    config.encryption_key_file = args.encryption_key_file;
    config.clusters.base_domain = args.base_domain.clone();
    config.clusters.max_ttl = paddock_apiserver::kubeconfig::parse_duration(
        &args.max_kubeconfig_ttl,
    )
    .with_context(|| {
        format!(
            "--max-kubeconfig-ttl {:?}: not a duration such as 24h",
            args.max_kubeconfig_ttl
        )
    })?;
    config.clusters.default_ttl = config.clusters.default_ttl.min(config.clusters.max_ttl);
    if let Some(u) = &args.gateway_url {
        config.clusters.gateway_url = u.clone();
    } else if let Some(g) = args.gateway_listen {
        let host = match (g.ip().is_unspecified(), args.gateway_vtep) {
            (false, _) => g.ip().to_string(),
            (true, Some(v)) => v.to_string(),
            (true, None) => "127.0.0.1".into(),
        };
        config.clusters.gateway_url = format!("https://{host}:{}", g.port());
    }
    let running = paddock_apiserver::start(config)
        .await
        .map_err(anyhow::Error::new)
        .context("starting the server")?;
    if !args.no_controllers {
        let cfg = paddock_controllers::Config {
            vni_base: args.vni_base,
            vni_count: args.vni_count,
            subnet_base: args.subnet_base,
            cpu_overcommit: args.cpu_overcommit,
            spread_workers: !args.pack_workers,
            host_grace: Duration::from_secs(args.host_grace_seconds),
            base_domain: args.base_domain.clone(),
            gateway_port: args.gateway_listen.map_or(6443, |g| g.port()),
            gateway_vtep: args.gateway_vtep,
            ingress_port_base: args.ingress_port_base,
            overlay_mtu: args.overlay_mtu,
            initialization_recorded: args.gateway_listen.is_some(),
            // The controllers read the workload clusters' APIs through this
            // process's own gateway.
            gateway_url: args.gateway_listen.map(|g| {
                let ip = if g.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    g.ip()
                };
                format!("https://{}", SocketAddr::new(ip, g.port()))
            }),
            drain_timeout: Duration::from_secs(args.drain_timeout_seconds),
            ..Default::default()
        };
        // On the leader only (every server, with the embedded store).
        let client = running.controllers.clone();
        running
            .spawn_leader_loops(move |_| paddock_controllers::loops(client.clone(), cfg.clone()));
    }
    if let Some(listen) = args.gateway_listen {
        let vtep = args
            .gateway_vtep
            .context("--gateway-listen needs --gateway-vtep (the underlay address)")?;
        let underlay_netns = args.gateway_underlay_netns.as_ref().map(|n| {
            if n.contains('/') {
                PathBuf::from(n)
            } else {
                paddock_net::netns::path(n)
            }
        });
        let load_balancer: Option<std::sync::Arc<dyn paddock_lb::LoadBalancer>> =
            args.haproxy_config.clone().map(|path| {
                std::sync::Arc::new(paddock_lb::haproxy::ConfigFile {
                    path,
                    options: paddock_lb::haproxy::Options {
                        bind_address: args.haproxy_bind.clone(),
                        ..Default::default()
                    },
                    reload: args
                        .haproxy_reload
                        .as_ref()
                        .map(|r| r.split_whitespace().map(str::to_owned).collect()),
                }) as std::sync::Arc<dyn paddock_lb::LoadBalancer>
            });
        let gw = paddock_gateway::GatewayConfig {
            listen,
            management_names: vec![management_name.clone()],
            management_addr: running.addr,
            base_domain: args.base_domain.clone(),
            vtep,
            underlay_netns,
            netns_prefix: args.gateway_netns_prefix.clone(),
            overlay_mtu: args.overlay_mtu,
            ingress_bind: args.ingress_bind,
            ingress_advertise: args.ingress_advertise.clone().unwrap_or_else(|| {
                if args.ingress_bind.is_unspecified() {
                    vtep.to_string()
                } else {
                    args.ingress_bind.to_string()
                }
            }),
            health_every: Duration::from_secs(1),
            resync: Duration::from_secs(5),
            load_balancer,
        };
        // On the leader only: with several servers the clusters' APIs move
        // with the leader (its listen address and VTEP must move with it,
        // as a floating address does); with one server it always runs.
        let client = running.controllers.clone();
        running.spawn_leader_loops(move |_| {
            let (client, gw) = (client.clone(), gw.clone());
            vec![(
                "gateway",
                Box::pin(async move {
                    if let Err(e) = paddock_gateway::run(client, gw).await {
                        tracing::error!(error = format!("{e:#}"), "the gateway failed");
                    }
                }) as paddock_apiserver::leader::LeaderLoop,
            )]
        });
    }
    // Stateless: every server serves it, the leader or not.
    let _tftp = match args.tftp_listen {
        Some(listen) => Some(
            paddock_netboot::tftp::Tftp::start(listen, &args.tftp_root)
                .await
                .context("--tftp-listen")?,
        ),
        None => None,
    };
    let _netboot = match args.netboot_address {
        Some(address) => {
            let pool = match &args.dhcp_range {
                Some(r) => {
                    let (first, last) = paddock_netboot::dhcp::parse_range(r)
                        .map_err(|e| anyhow::anyhow!("--dhcp-range: {e}"))?;
                    Some(paddock_netboot::dhcp::Pool {
                        first,
                        last,
                        netmask: args.dhcp_netmask,
                        router: args.dhcp_router,
                        dns: Vec::new(),
                        lease: Duration::from_secs(3600),
                    })
                }
                None => None,
            };
            let netns = args.netboot_netns.as_ref().map(|n| {
                if n.contains('/') {
                    PathBuf::from(n)
                } else {
                    paddock_net::netns::path(n)
                }
            });
            let settings = netboot::Settings {
                address,
                interface: args.netboot_interface.clone().unwrap_or_default(),
                api_port_in_netns: netns.as_ref().map(|_| running.addr.port()),
                netns,
                pool,
                http_port: args.netboot_http_port,
                image: args.netboot_image.clone(),
                api_url: format!("https://{address}:{}", running.addr.port()),
                cmdline: args.netboot_cmdline.clone(),
            };
            Some(netboot::start(settings, &running).context("netboot services")?)
        }
        None => None,
    };
    eprintln!(
        "paddock server listening on {}\nadmin kubeconfig: {}",
        running.data.url,
        running.data.admin_kubeconfig().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown();
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    init_tracing();
    let mut args = args;
    let kc = if args.join_cmdline {
        let (name, kc) = join_from_cmdline(&args.state_dir).await?;
        args.name.get_or_insert(name);
        kc
    } else {
        args.kubeconfig
            .clone()
            .unwrap_or_else(|| paddock_cli::default_data_dir().join("admin.kubeconfig"))
    };
    let kubeconfig = Kubeconfig::read_from(&kc)
        .with_context(|| format!("reading kubeconfig {}", kc.display()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("kubeconfig")?;
    if let Some(socket) = &args.api_socket {
        let addr = paddock_agent::forward_api_socket(socket.clone()).await?;
        config.cluster_url = format!("https://{addr}").parse().context("forwarder URL")?;
    } else if let Some(server) = &args.server {
        config.cluster_url = server
            .parse()
            .with_context(|| format!("--server {server}"))?;
    }
    if let Some(t) = &args.token {
        config.auth_info.token = Some(t.clone().into());
    }
    let client = kube::Client::try_from(config).context("API client")?;
    let name = match args.name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("hostname")?
            .trim()
            .to_owned(),
    };
    let cfg = paddock_agent::AgentConfig {
        name,
        underlay: args.underlay_ip,
        state_dir: args.state_dir,
        qemu: args.qemu,
        accel: args.accel,
        probe_kernel: args.probe_kernel,
        default_image: args.default_image,
        reserve: paddock_api::host::Resources {
            cpu: args.reserve_cpu,
            memory: args.reserve_memory,
        },
        stop_grace: Duration::from_secs(args.stop_grace),
        resync: Duration::from_secs(2),
        heartbeat: Duration::from_secs(args.heartbeat_seconds.max(1)),
    };
    tokio::select! {
        r = paddock_agent::run(client, cfg) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// `paddock agent --join-cmdline`: this host's kubeconfig, joining first
/// if it has none yet; and the host's name.
async fn join_from_cmdline(state_dir: &std::path::Path) -> anyhow::Result<(String, PathBuf)> {
    use paddock_netboot::http::cmdline;
    let line = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let arg = |key: &str| {
        line.split_whitespace()
            .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(str::to_owned)
            .with_context(|| format!("the kernel command line has no {key}="))
    };
    let host = arg(cmdline::HOST)?;
    let kc = state_dir.join("host.kubeconfig");
    if kc.exists() {
        tracing::info!(path = %kc.display(), "joined before: using the kept host credential");
        return Ok((host, kc));
    }
    let params = paddock_agent::join::JoinParams {
        netboot: arg(cmdline::NETBOOT)?,
        api: arg(cmdline::API)?,
        ca_sha256: arg(cmdline::CA_SHA256)?,
        token: arg(cmdline::JOIN)?,
    };
    let joined = paddock_agent::join::join(&params).await?;
    let name = joined.host.clone();
    let config = paddock_apiserver::bootstrap::kubeconfig(
        &params.api,
        &joined.ca_pem,
        "paddock",
        &paddock_apiserver::authz::host_user(&name),
        &joined.token,
    );
    if name != host {
        anyhow::bail!("joined as host {name:?}, but the command line names {host:?}");
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    paddock_apiserver::bootstrap::write_private(&kc, config.as_bytes())
        .with_context(|| format!("writing {}", kc.display()))?;
    tracing::info!(host = %name, "joined: host credential kept in {}", kc.display());
    Ok((name, kc))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => match server(*args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Agent(args) => match agent(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dev(cmd) => {
            let res = match cmd {
                DevCommand::Up {
                    hosts,
                    data_dir,
                    image_dir,
                    kube_image,
                    ha,
                    bare_metal,
                    bare_metal_memory,
                    monitoring,
                } => {
                    dev::up(dev::Up {
                        hosts,
                        data_dir,
                        image_dir,
                        kube_image,
                        ha,
                        bare_metal,
                        bare_metal_memory,
                        monitoring,
                    })
                    .await
                }
                DevCommand::Bmc {
                    data_dir,
                    listen,
                    machines,
                    memory,
                    password_file,
                } => {
                    init_tracing();
                    match std::fs::read_to_string(&password_file) {
                        Ok(p) => {
                            labbmc::run(labbmc::Settings {
                                listen,
                                username: "admin".into(),
                                password: p.trim().to_owned(),
                                netns: dev::FABRIC.into(),
                                machines: labbmc::machines(&data_dir, machines),
                                memory_mib: memory,
                                cpus: 2,
                            })
                            .await
                        }
                        Err(e) => Err(anyhow::anyhow!(
                            "--password-file {}: {e}",
                            password_file.display()
                        )),
                    }
                }
                DevCommand::Down { data_dir } => dev::down(&data_dir),
            };
            match res {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::AddUser(a) => {
            let dir = a.data_dir.unwrap_or_else(paddock_cli::default_data_dir);
            let mut groups: Vec<String> = a
                .orgs
                .iter()
                .map(|o| paddock_apiserver::authz::org_group(o))
                .collect();
            groups.extend(a.groups);
            let ttl = match a
                .ttl
                .as_deref()
                .map(|t| (t, paddock_apiserver::kubeconfig::parse_duration(t)))
            {
                None => None,
                Some((_, Some(d))) => Some(d),
                Some((t, None)) => {
                    eprintln!("error: --ttl {t:?}: want a duration such as 8h or 30d");
                    return ExitCode::FAILURE;
                }
            };
            match paddock_apiserver::bootstrap::add_user_for(&dir, &a.name, &groups, ttl) {
                Ok(kc) => {
                    print!("{kc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {:#}", anyhow::Error::new(e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::RevokeUser(a) => {
            let dir = a.data_dir.unwrap_or_else(paddock_cli::default_data_dir);
            match paddock_apiserver::bootstrap::revoke_user(&dir, &a.name) {
                Ok(n) => {
                    println!("revoked {n} token(s) of user {}", a.name);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {:#}", anyhow::Error::new(e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::AddHost(a) => match add_host(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Admin(cmd) => match admin::run(cmd, cli.global.kubeconfig.as_deref()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Monitoring(MonitoringCommand::Write {
            dir,
            servers,
            ca_file,
            token_file,
            interval,
        }) => match monitoring::write(&dir, servers, ca_file, token_file, interval) {
            Ok(config) => {
                println!(
                    "wrote {} and the rules and dashboards beside it",
                    config.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::User(cmd) => paddock_cli::run(cmd, cli.global).await,
    }
}
