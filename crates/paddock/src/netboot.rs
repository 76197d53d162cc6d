//! The netboot services of `paddock server` (DHCP and the iPXE HTTP
//! endpoint, [`paddock_netboot`]) over the Hosts: a machine is known by a
//! Host's `spec.bootMAC`; in full DHCP mode its lease is kept in the Host's
//! `status.provisioning.bootAddress`, so every server gives it the same
//! address; its iPXE script carries a new single-use join token.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use paddock_api::Host;
use paddock_netboot::dhcp::{self, DirectoryError, Lookup, Mac, Pool};
use paddock_netboot::http::Script;
use serde_json::json;

/// How long a join token lasts: a netboot takes minutes at most.
pub const JOIN_TTL: Duration = Duration::from_secs(15 * 60);

/// `paddock server`'s netboot settings.
pub struct Settings {
    /// The server's address on the PXE network.
    pub address: Ipv4Addr,
    /// The PXE network's interface (DHCP binds to it).
    pub interface: String,
    /// The network namespace that has that interface, if not this one.
    pub netns: Option<PathBuf>,
    /// Full DHCP from this pool; proxyDHCP without.
    pub pool: Option<Pool>,
    pub http_port: u16,
    /// The host image: `vmlinuz` and `initrd.img`.
    pub image: Option<PathBuf>,
    /// The API's URL as hosts reach it.
    pub api_url: String,
    /// Also serve the API on this port of `address` inside `netns`.
    pub api_port_in_netns: Option<u16>,
    /// Extra kernel command line for the host image.
    pub cmdline: String,
}

/// Looks machines up among the Hosts, through the server's own client.
#[derive(Clone)]
struct Hosts {
    client: kube::Client,
    api: paddock_apiserver::api::Api,
    server: Ipv4Addr,
    base: String,
    api_url: String,
    ca_sha256: String,
    cmdline: String,
}

fn mac_of(h: &Host) -> Option<Mac> {
    h.spec.boot_mac.as_deref()?.parse().ok()
}

fn boot_address(h: &Host) -> Option<Ipv4Addr> {
    h.status
        .as_ref()?
        .provisioning
        .as_ref()?
        .boot_address
        .as_deref()?
        .parse()
        .ok()
}

fn err(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError(e.to_string())
}

impl Hosts {
    async fn find(&self, mac: Mac) -> Result<(Option<Host>, Vec<Host>), DirectoryError> {
        let all = Api::<Host>::all(self.client.clone())
            .list(&Default::default())
            .await
            .map_err(err)?
            .items;
        let me = all.iter().find(|h| mac_of(h) == Some(mac)).cloned();
        Ok((me, all))
    }

    async fn patch_provisioning(
        &self,
        host: &str,
        p: serde_json::Value,
    ) -> Result<(), DirectoryError> {
        Api::<Host>::all(self.client.clone())
            .patch_status(
                host,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"provisioning": p}})),
            )
            .await
            .map_err(err)?;
        Ok(())
    }
}

impl dhcp::Directory for Hosts {
    async fn lookup(&self, mac: Mac, pool: Option<&Pool>) -> Result<Lookup, DirectoryError> {
        let (me, all) = self.find(mac).await?;
        let Some(me) = me else {
            return Ok(Lookup::Unknown);
        };
        let Some(pool) = pool else {
            return Ok(Lookup::Known { address: None });
        };
        if let Some(a) = boot_address(&me).filter(|a| pool.contains(*a)) {
            return Ok(Lookup::Known { address: Some(a) });
        }
        let taken: std::collections::HashSet<Ipv4Addr> = all
            .iter()
            .filter(|h| h.name_any() != me.name_any())
            .filter_map(boot_address)
            .collect();
        let Some(free) = pool
            .addresses()
            .find(|a| *a != self.server && !taken.contains(a))
        else {
            tracing::warn!(%mac, host = %me.name_any(), "DHCP pool exhausted");
            return Ok(Lookup::Known { address: None });
        };
        self.patch_provisioning(&me.name_any(), json!({"bootAddress": free.to_string()}))
            .await?;
        tracing::info!(%mac, host = %me.name_any(), address = %free, "DHCP: address leased");
        Ok(Lookup::Known {
            address: Some(free),
        })
    }
}

impl paddock_netboot::http::Scripts for Hosts {
    async fn script(&self, mac: Mac) -> Result<Option<String>, DirectoryError> {
        let (me, _) = self.find(mac).await?;
        let Some(me) = me else { return Ok(None) };
        if me.metadata.deletion_timestamp.is_some() || me.spec.online == Some(false) {
            return Ok(None);
        }
        let name = me.name_any();
        let token = paddock_apiserver::join::issue_join_token(&self.api, &name, JOIN_TTL)
            .await
            .map_err(err)?;
        self.patch_provisioning(&name, json!({"netbootedAt": Time(jiff::Timestamp::now())}))
            .await?;
        Ok(Some(
            Script {
                base: self.base.clone(),
                host: name,
                join_token: token,
                api: self.api_url.clone(),
                ca_sha256: self.ca_sha256.clone(),
                cmdline: self.cmdline.clone(),
            }
            .render(),
        ))
    }
}

/// What runs; stopped when dropped.
pub struct Services {
    _dhcp: dhcp::Dhcp,
    _http: paddock_netboot::http::Http,
}

fn in_netns<T: Send>(
    netns: &Option<PathBuf>,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    match netns {
        Some(ns) => paddock_net::netns::run_in(ns, f),
        None => f(),
    }
}

/// Starts DHCP and the HTTP endpoint (and, in a namespace, the API there).
pub fn start(s: Settings, running: &paddock_apiserver::Running) -> anyhow::Result<Services> {
    let ca_pem = running.data.ca_pem.clone();
    let base = format!("http://{}:{}", s.address, s.http_port);
    let hosts = Hosts {
        client: running.loopback.clone(),
        api: running.api.clone(),
        server: s.address,
        base: base.clone(),
        api_url: s.api_url.clone(),
        ca_sha256: paddock_agent::join::ca_hash(&ca_pem),
        cmdline: s.cmdline.clone(),
    };
    let ports: Vec<u16> = if s.pool.is_some() {
        vec![67]
    } else {
        vec![67, dhcp::PXE_PORT]
    };
    let iface = s.interface.clone();
    let sockets = in_netns(&s.netns, || {
        ports.iter().map(|p| dhcp::bind(*p, &iface)).collect()
    })
    .with_context(|| format!("DHCP cannot bind on {}", s.interface))?;
    let http_addr = SocketAddr::from((s.address, s.http_port));
    let http_listener = in_netns(&s.netns, || std::net::TcpListener::bind(http_addr))
        .with_context(|| format!("netboot HTTP cannot listen on {http_addr}"))?;
    if let Some(port) = s.api_port_in_netns {
        let addr = SocketAddr::from((s.address, port));
        let l = in_netns(&s.netns, || std::net::TcpListener::bind(addr))
            .with_context(|| format!("the API cannot listen on {addr}"))?;
        running
            .serve_also("serve-netboot-network", l)
            .context("serving the API on the PXE network")?;
    }
    let cfg = dhcp::Config {
        server: s.address,
        mode: match s.pool {
            Some(p) => dhcp::Mode::Full(p),
            None => dhcp::Mode::Proxy,
        },
        boot: dhcp::Boot {
            http_base: base,
            ..Default::default()
        },
    };
    let http = paddock_netboot::http::Http::start(http_listener, s.image, ca_pem, hosts.clone())
        .context("netboot HTTP")?;
    let dhcp = dhcp::Dhcp::start(cfg, hosts, sockets).context("DHCP")?;
    Ok(Services {
        _dhcp: dhcp,
        _http: http,
    })
}
