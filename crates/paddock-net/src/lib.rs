//! Host networking for Paddock's per-cluster overlays, all through netlink:
//! one bridge and one VXLAN device per cluster, a tap per VM on that
//! bridge, and static forwarding entries (no learning) towards the VTEPs of
//! the other hosts that carry the cluster.

pub mod fake;
pub mod guard;
pub mod host;
pub mod netns;
mod tap;

pub use host::{HostNet, HostNetError};

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVxlan};

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds to every frame over IPv4 (outer IP, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Prefixes of every interface Paddock owns; nothing else is touched.
pub const BRIDGE_PREFIX: &str = "pdbr";
pub const VXLAN_PREFIX: &str = "pdvx";
pub const TAP_PREFIX: &str = "pdtap";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink connection")]
    Connect(#[source] std::io::Error),
    #[error("{op} {name}")]
    Netlink {
        op: &'static str,
        name: String,
        source: rtnetlink::Error,
    },
    #[error("creating tap {0}")]
    Tap(String, #[source] std::io::Error),
    #[error("no interface holds the underlay address {0}")]
    NoUnderlay(IpAddr),
    #[error("interface {0} is missing")]
    Missing(String),
}

type Result<T, E = NetError> = std::result::Result<T, E>;

fn nl<'a>(op: &'static str, name: &'a str) -> impl FnOnce(rtnetlink::Error) -> NetError + 'a {
    move |source| NetError::Netlink {
        op,
        name: name.to_owned(),
        source,
    }
}

pub fn bridge_name(vni: u32) -> String {
    format!("{BRIDGE_PREFIX}{vni}")
}
pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni}")
}
/// A tap name from a stable id (such as the Machine's uid): `pdtap` + 10 hex digits.
pub fn tap_name(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(10)
        .collect();
    format!("{TAP_PREFIX}{hex}")
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const ZERO: Mac = Mac([0; 6]);
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u8> = s
            .split(':')
            .map(|p| u8::from_str_radix(p, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad MAC {s:?}"))?;
        <[u8; 6]>::try_from(parts)
            .map(Mac)
            .map_err(|_| format!("bad MAC {s:?}"))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One static forwarding entry of a VXLAN device: frames for `mac` (all-zero:
/// broadcast and unknown) go to the VTEP `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// A link that exists on this host.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub controller: Option<u32>,
}

/// A VXLAN device as every overlay has it: its VNI, local VTEP, port 4789,
/// no learning (forwarding entries are static).
fn vxlan(
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    mtu: u32,
) -> rtnetlink::LinkMessageBuilder<LinkVxlan> {
    LinkVxlan::new(name, vni)
        .local(local)
        .port(VXLAN_PORT)
        .learning(false)
        .mtu(mtu)
}

/// A netlink handle in the caller's network namespace.
#[derive(Clone)]
pub struct Net {
    handle: Handle,
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    let mut controller = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Controller(c) => controller = Some(*c),
            _ => {}
        }
    }
    Some(Link {
        name: name?,
        index: msg.header.index,
        mtu,
        controller,
    })
}

impl Net {
    /// Opens a netlink socket; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Opens a netlink socket inside the named namespace at `ns`; must be
    /// called inside a tokio runtime.
    pub fn connect_in(ns: &std::path::Path) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        netns::run_in(ns, || {
            let _g = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok(Self { handle })
        })
        .map_err(NetError::Connect)
    }

    /// Sets a link up by name.
    pub async fn set_up(&self, name: &str) -> Result<()> {
        let l = self.existing(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(l.index).up().build())
            .execute()
            .await
            .map_err(nl("set up", name))
    }

    /// A VXLAN device for overlay `vni` made from this namespace (its UDP
    /// socket, on `local`, stays here) but placed in the namespace `target`,
    /// with the given MAC and MTU. Nothing is done if `exists`.
    pub async fn create_vxlan_in(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        mac: Mac,
        mtu: u32,
        target: &std::fs::File,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let msg = vxlan(name, vni, local, mtu)
            .address(mac.0.to_vec())
            .setns_by_fd(target.as_raw_fd())
            .build();
        self.add_link(msg, name).await?;
        tracing::info!(vxlan = name, vni, %local, "created vxlan in another namespace");
        Ok(())
    }

    /// Adds `addr/prefix` to link `name` unless it has it; sets the link up.
    pub async fn ensure_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let l = self.existing(name).await?;
        let have: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(l.index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses", name))?;
        let present = have.iter().any(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == addr))
        });
        if !present {
            self.handle
                .address()
                .add(l.index, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(nl("add address", name))?;
        }
        self.set_up(name).await
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list", "links"))?;
        Ok(msgs.iter().filter_map(link_of).collect())
    }

    async fn add_link(&self, msg: LinkMessage, name: &str) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("create", name))
    }

    /// The link `name`, which must exist.
    pub async fn existing(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| NetError::Missing(name.to_owned()))
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// The MTU of the interface holding `addr`.
    pub async fn underlay_mtu(&self, addr: Ipv4Addr) -> Result<u32> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list", "addresses"))?;
        let index = addrs
            .iter()
            .find(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == addr))
            })
            .map(|m| m.header.index)
            .ok_or(NetError::NoUnderlay(IpAddr::V4(addr)))?;
        let links = self.links().await?;
        links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.mtu)
            .ok_or(NetError::NoUnderlay(IpAddr::V4(addr)))
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        if let Some(l) = self.link(name).await? {
            self.handle
                .link()
                .del(l.index)
                .execute()
                .await
                .map_err(nl("delete", name))?;
            tracing::info!(link = name, "deleted link");
        }
        Ok(())
    }

    /// A bridge for one cluster's overlay, up, with the given MTU.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        if self.link(name).await?.is_none() {
            let msg = LinkBridge::new(name).mtu(mtu).up().build();
            self.handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(nl("create bridge", name))?;
            tracing::info!(bridge = name, mtu, "created bridge");
        }
        let l = self.existing(name).await?;
        if l.mtu != mtu {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(l.index).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl("set mtu", name))?;
        }
        Ok(l.index)
    }

    /// The cluster's VXLAN device: its VNI, local VTEP, port 4789, no
    /// learning, enslaved to the bridge.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        bridge: u32,
        mtu: u32,
    ) -> Result<u32> {
        if self.link(name).await?.is_none() {
            let msg = vxlan(name, vni, local, mtu).controller(bridge).up().build();
            self.add_link(msg, name).await?;
            tracing::info!(vxlan = name, vni, %local, "created vxlan");
        }
        Ok(self.attached(name, bridge, mtu).await?.0.index)
    }

    /// The existing link `name`, enslaved to `bridge`, with `mtu`, up.
    /// Also says whether it had to be (re)attached.
    async fn attached(&self, name: &str, bridge: u32, mtu: u32) -> Result<(Link, bool)> {
        let l = self.existing(name).await?;
        let change = l.controller != Some(bridge) || l.mtu != mtu;
        if change {
            let msg = LinkUnspec::new_with_index(l.index)
                .controller(bridge)
                .mtu(mtu)
                .up()
                .build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl("attach", name))?;
        }
        Ok((l, change))
    }

    /// A VM's tap on the cluster bridge. The port only forwards frames from
    /// `mac` (locked port, static entry, no learning); [`guard::apply`] adds
    /// the IP check.
    pub async fn ensure_tap(&self, name: &str, bridge: u32, mtu: u32, mac: Mac) -> Result<u32> {
        if self.link(name).await?.is_none() {
            tap::create_persistent_tap(name).map_err(|e| NetError::Tap(name.to_owned(), e))?;
            tracing::info!(tap = name, "created tap");
        }
        let (l, attached) = self.attached(name, bridge, mtu).await?;
        if attached {
            self.handle
                .link()
                .set_port(
                    LinkBridgePort::new(l.index)
                        .learning(false)
                        .locked(true)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl("lock port", name))?;
        }
        let fdb = self.bridge_fdb(l.index).await?;
        if !fdb.contains(&mac) {
            let mut msg = fdb_message(l.index, mac, None);
            msg.header.flags = NeighbourFlags::Controller;
            self.send(msg, NLM_F_CREATE | NLM_F_APPEND, name).await?;
        }
        Ok(l.index)
    }

    /// Static (permanent) MACs on a bridge port.
    async fn bridge_fdb(&self, port: u32) -> Result<BTreeSet<Mac>> {
        Ok(self
            .dump_fdb(port)
            .await?
            .into_iter()
            .filter(|(_, dst)| dst.is_none())
            .map(|(m, _)| m)
            .collect())
    }

    async fn dump_fdb(&self, index: u32) -> Result<Vec<(Mac, Option<Ipv4Addr>)>> {
        let mut req = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge);
        req.message_mut().header.ifindex = index;
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl("list", "fdb"))?;
        let mut out = Vec::new();
        for m in msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state.contains_permanent())
        {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac)
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    // In the bridge family the address is not decoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                    }
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push((mac, dst));
            }
        }
        Ok(out)
    }

    /// The static VTEP entries of a VXLAN device.
    pub async fn vxlan_fdb(&self, vxlan: u32) -> Result<BTreeSet<FdbEntry>> {
        Ok(self
            .dump_fdb(vxlan)
            .await?
            .into_iter()
            .filter_map(|(mac, dst)| Some(FdbEntry { mac, dst: dst? }))
            .collect())
    }

    /// Makes the VXLAN device's static entries exactly `want`.
    pub async fn sync_vxlan_fdb(
        &self,
        name: &str,
        vxlan: u32,
        want: &BTreeSet<FdbEntry>,
    ) -> Result<()> {
        let have = self.vxlan_fdb(vxlan).await?;
        for e in have.difference(want) {
            let mut msg = fdb_message(vxlan, e.mac, Some(e.dst));
            msg.header.flags = NeighbourFlags::Own;
            self.handle
                .neighbours()
                .del(msg)
                .execute()
                .await
                .map_err(nl("delete fdb entry", name))?;
            tracing::debug!(vxlan = name, mac = %e.mac, dst = %e.dst, "removed fdb entry");
        }
        for e in want.difference(&have) {
            let mut msg = fdb_message(vxlan, e.mac, Some(e.dst));
            msg.header.flags = NeighbourFlags::Own;
            self.send(msg, NLM_F_CREATE | NLM_F_APPEND, name).await?;
            tracing::debug!(vxlan = name, mac = %e.mac, dst = %e.dst, "added fdb entry");
        }
        Ok(())
    }

    async fn send(&self, msg: NeighbourMessage, flags: u16, name: &str) -> Result<()> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut resp = self
            .handle
            .clone()
            .request(req)
            .map_err(nl("fdb request", name))?;
        use futures::StreamExt;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(NetError::Netlink {
                    op: "add fdb entry",
                    name: name.to_owned(),
                    source: rtnetlink::Error::NetlinkError(e),
                });
            }
        }
        Ok(())
    }
}

trait PermanentState {
    fn contains_permanent(&self) -> bool;
}

impl PermanentState for NeighbourState {
    fn contains_permanent(&self) -> bool {
        matches!(self, NeighbourState::Permanent | NeighbourState::Noarp)
    }
}

/// An FDB entry: with a `dst`, a VXLAN device's own (permanent) entry; without,
/// a static bridge entry pointing at the port `index` (not a local address).
fn fdb_message(index: u32, mac: Mac, dst: Option<Ipv4Addr>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = if dst.is_some() {
        NeighbourState::Permanent
    } else {
        NeighbourState::Noarp
    };
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(d) = dst {
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(d)));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        assert_eq!(bridge_name(16_777_215), "pdbr16777215");
        assert!(vxlan_name(16_777_215).len() < 16);
        let t = tap_name("0b6f2c1e-9a3d-4f5e-8b7a-123456789abc");
        assert_eq!(t, "pdtap0b6f2c1e9a");
        assert!(t.len() < 16);
    }

    #[test]
    fn macs_parse_and_print() {
        let m: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert!("52:54:00".parse::<Mac>().is_err());
    }
}
