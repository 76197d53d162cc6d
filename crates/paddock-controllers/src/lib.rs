//! Paddock's controllers, run inside `paddock server`: the cluster
//! controller (overlay, Machines, scaling, status), the scheduler (binds
//! Machines to Hosts), host health (leases, NotReady, replacement), BMC
//! power (hosts powered as `spec.online` says) and the workload loop (Nodes as the workload clusters report them, drains). Each
//! is level-triggered: it reads the world through the API and takes the
//! next step; any of them can be killed at any line.

pub mod bmc;
pub mod bootstrap;
pub mod cluster;
pub mod events;
pub mod health;
pub mod intake;
pub mod overlay;
pub mod scheduler;
pub mod workload;

use std::net::Ipv4Addr;
use std::time::Duration;

/// Tunables of the controllers.
#[derive(Debug, Clone)]
pub struct Config {
    /// First VNI handed out.
    pub vni_base: u32,
    /// How many VNIs (and /24 subnets) the pool holds.
    pub vni_count: u32,
    /// Subnets are carved as /24s from here on (10.64.0.0 gives 10.64.0.0/24, 10.64.1.0/24, ...).
    pub subnet_base: Ipv4Addr,
    /// CPUs may be committed up to this many times what a host has.
    pub cpu_overcommit: f64,
    /// Memory may be committed up to this many times what a host has.
    pub memory_overcommit: f64,
    /// Spread workers over hosts (else pack them).
    pub spread_workers: bool,
    /// How long a host may be NotReady before its Machines are replaced.
    pub host_grace: Duration,
    /// Label naming a host's rack.
    pub rack_label: String,
    /// Clusters are reached as `<cluster>.<org>.<base_domain>`.
    pub base_domain: String,
    /// Port of the gateway (the clusters' API endpoint).
    pub gateway_port: u16,
    /// Underlay address where the gateway joins every overlay, if it runs.
    pub gateway_vtep: Option<Ipv4Addr>,
    /// First management-plane port for ingress; each overlay slot takes two.
    pub ingress_port_base: u16,
    /// MTU of the overlays as the VMs see it.
    pub overlay_mtu: u32,
    /// `https://host:port` where the controllers reach the gateway, and so
    /// the workload clusters' own APIs (Node readiness, drains); without
    /// it a Machine is ready when its guest is.
    pub gateway_url: Option<String>,
    /// How long a drain waits for pods to leave (PodDisruptionBudgets may
    /// hold them) before a Warning Event and a forced stop.
    pub drain_timeout: Duration,
    /// How often the workload clusters' Nodes are read.
    pub node_status_every: Duration,
    /// Whether a gateway records `status.initialization` (`paddock server
    /// --gateway-listen` runs one). Only then can a lost init Machine be
    /// told apart from a lost member of a running control plane, and be
    /// replaced by a new init; without it the init Machine is named once.
    pub initialization_recorded: bool,
    /// The most one call to a host's BMC may take.
    pub bmc_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            vni_base: 1000,
            vni_count: 4096,
            subnet_base: Ipv4Addr::new(10, 64, 0, 0),
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            spread_workers: true,
            host_grace: Duration::from_secs(60),
            initialization_recorded: false,
            rack_label: "paddock.io/rack".into(),
            base_domain: "paddock.local".into(),
            gateway_port: 6443,
            gateway_vtep: None,
            ingress_port_base: 20000,
            overlay_mtu: 1450,
            gateway_url: None,
            drain_timeout: Duration::from_secs(300),
            node_status_every: Duration::from_secs(10),
            bmc_timeout: Duration::from_secs(20),
        }
    }
}

/// One controller's loop, which runs until dropped.
pub type Loop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Every controller, by name, for the caller to run supervised (each
/// returns only if it fails).
pub fn loops(client: kube::Client, cfg: Config) -> Vec<(&'static str, Loop)> {
    let cfg = std::sync::Arc::new(cfg);
    vec![
        (
            "cluster-controller",
            Box::pin(cluster::run(client.clone(), cfg.clone())),
        ),
        (
            "scheduler",
            Box::pin(scheduler::run(client.clone(), cfg.clone())),
        ),
        (
            "host-health",
            Box::pin(health::run(client.clone(), cfg.clone())),
        ),
        (
            "host-bmc",
            Box::pin(bmc::run(
                client.clone(),
                std::sync::Arc::new(bmc::Drivers),
                cfg.bmc_timeout,
                cfg.host_grace,
            )),
        ),
        ("workload", Box::pin(workload::run(client, cfg))),
    ]
}
