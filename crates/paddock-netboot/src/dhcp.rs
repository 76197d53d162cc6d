//! DHCP for the PXE network: either a full server that leases addresses
//! from a range, or proxyDHCP beside the site's own DHCP server (which
//! leases the address; Paddock adds only where to boot from, RFC 4578 and
//! the PXE specification). Messages are parsed and encoded by `dhcproto`;
//! what to answer is [`answer`], a pure function.
//!
//! Only machines the [`Directory`] knows (registered Hosts' boot MACs) get
//! an answer; every other MAC gets nothing, so Paddock never hands out
//! addresses or boot files to machines it does not own. The boot file
//! depends on the client: a BIOS PXE ROM gets iPXE's `undionly.kpxe`, a
//! UEFI one `ipxe.efi` (both over TFTP), and iPXE itself — recognised by
//! its user class — the URL of its iPXE script over HTTP.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

/// A hardware (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

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

impl std::str::FromStr for Mac {
    type Err = String;
    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, either case.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let mut m = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        for (b, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(Mac(m))
    }
}

/// The addresses a full server leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease: Duration,
}

impl Pool {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(a))
    }

    /// Every address of the range, in order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

/// Parses `FIRST-LAST` (`10.77.0.100-10.77.0.199`).
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range FIRST-LAST"))?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
    if u32::from(first) > u32::from(last) {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok((first, last))
}

/// Whether this server leases addresses or only says where to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Full(Pool),
    Proxy,
}

/// Where each kind of client boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// For BIOS PXE ROMs, over TFTP (`undionly.kpxe`).
    pub bios: String,
    /// For UEFI PXE ROMs, over TFTP (`ipxe.efi`).
    pub uefi: String,
    /// The base of the iPXE script URL (`http://10.0.0.2:8080`); the
    /// script of a machine is at `<base>/boot.ipxe?mac=<mac>`.
    pub http_base: String,
}

impl Default for Boot {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            uefi: "ipxe.efi".into(),
            http_base: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This server's address on the PXE network: its identifier, the TFTP
    /// server (next-server) and the HTTP endpoint's host.
    pub server: Ipv4Addr,
    pub mode: Mode,
    pub boot: Boot,
}

/// What the directory knows of a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a machine Paddock owns: it gets no answer.
    Unknown,
    /// A registered machine; in full mode, the address it holds.
    Known { address: Option<Ipv4Addr> },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirectoryError(pub String);

/// Who the machines are. `lease` is asked for an address only in full
/// mode, and must give a MAC the same address each time (recording it
/// where every server sees it) and never one another MAC holds.
pub trait Directory: Send + Sync + 'static {
    fn lookup(
        &self,
        mac: Mac,
        pool: Option<&Pool>,
    ) -> impl std::future::Future<Output = Result<Lookup, DirectoryError>> + Send;
}

/// A fixed set of machines and their addresses (tests, and a site that
/// lists them by hand).
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory(pub std::collections::BTreeMap<Mac, Option<Ipv4Addr>>);

impl Directory for StaticDirectory {
    async fn lookup(&self, mac: Mac, _pool: Option<&Pool>) -> Result<Lookup, DirectoryError> {
        Ok(match self.0.get(&mac) {
            Some(a) => Lookup::Known { address: *a },
            None => Lookup::Unknown,
        })
    }
}

/// The client firmware, as far as booting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// iPXE (user class "iPXE"): fetch the script over HTTP.
    Ipxe,
    /// A BIOS PXE ROM (architecture 0).
    Bios,
    /// A UEFI PXE ROM (architectures 6, 7, 9: IA32, BC, x86-64).
    Uefi,
    /// A PXE client of an architecture Paddock has no boot file for.
    Other(u16),
    /// Not a PXE client at all (an OS's DHCP client).
    NotPxe,
}

/// What a request says about its sender.
pub fn firmware(req: &Message) -> Firmware {
    let opts = req.opts();
    let ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => u.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    if ipxe {
        return Firmware::Ipxe;
    }
    let pxe = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.starts_with(b"PXEClient"),
        _ => false,
    };
    if !pxe {
        return Firmware::NotPxe;
    }
    match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => match a.0 {
            0 => Firmware::Bios,
            6 | 7 | 9 => Firmware::Uefi,
            n => Firmware::Other(n),
        },
        // PXE 2.1 clients that send no architecture are BIOS.
        _ => Firmware::Bios,
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The limited broadcast, port 68: the client has no address yet.
    Broadcast,
    /// Unicast to this address (a relay, a client that has one, or a
    /// ProxyDHCP request's sender).
    To(SocketAddrV4),
}

/// The port proxyDHCP answers PXE clients' boot-server requests on.
pub const PXE_PORT: u16 = 4011;

/// Reads a request's client MAC (Ethernet only).
pub fn client_mac(req: &Message) -> Option<Mac> {
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return None;
    }
    let c = req.chaddr();
    Some(Mac(c.get(..6)?.try_into().ok()?))
}

/// Decodes a datagram; `None` for anything that is not a DHCP message.
///
/// `dhcproto` asserts some options' lengths with `debug_assert!` and
/// subtracts from others unchecked (found by the `dhcp` fuzz target: a
/// Bulk Leasequery option of the wrong length panics a debug build), so a
/// panic inside it counts as a message that does not decode, instead of
/// taking the server down. And its `chaddr()` slices by the wire's
/// `hlen` unchecked (found by the same target: an `hlen` over 16 panics
/// in any build), so such a message does not decode either.
pub fn decode(bytes: &[u8]) -> Option<Message> {
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)).ok())
        .ok()
        .flatten()
        .filter(|m| m.hlen() <= 16)
}

/// The reply to `req`, received on `port` from `from`, for a client the
/// directory answered `found` about; `None` when the server stays silent.
pub fn answer(
    cfg: &Config,
    req: &Message,
    from: SocketAddrV4,
    port: u16,
    found: &Lookup,
) -> Option<(Message, Destination)> {
    client_mac(req)?;
    let address = match found {
        Lookup::Unknown => return None,
        Lookup::Known { address } => *address,
    };
    let kind = req.opts().msg_type()?;
    let fw = firmware(req);
    let file = match fw {
        Firmware::Ipxe => Some(format!(
            "{}/boot.ipxe?mac={}",
            cfg.boot.http_base,
            client_mac(req)?
        )),
        Firmware::Bios => Some(cfg.boot.bios.clone()),
        Firmware::Uefi => Some(cfg.boot.uefi.clone()),
        Firmware::Other(_) | Firmware::NotPxe => None,
    };
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    match &cfg.mode {
        Mode::Proxy => {
            // Only PXE clients, and only where to boot: the site's server
            // leases the address.
            let file = file?;
            let reply_kind = match (kind, port) {
                (MessageType::Discover, p) if p != PXE_PORT => MessageType::Offer,
                (MessageType::Request, PXE_PORT) => MessageType::Ack,
                _ => return None,
            };
            let mut m = reply(cfg, req, reply_kind);
            m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
            boot_options(cfg, &mut m, &file, true);
            // PXE discovery control 8: boot from the file named here, no
            // boot server discovery.
            m.opts_mut()
                .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            let to = if port == PXE_PORT {
                Destination::To(from)
            } else {
                destination(req)
            };
            Some((m, to))
        }
        Mode::Full(pool) => {
            let address = address.filter(|a| pool.contains(*a))?;
            let reply_kind = match kind {
                MessageType::Discover => MessageType::Offer,
                MessageType::Request => {
                    if server_id.is_some_and(|s| s != cfg.server) {
                        // The client took another server's offer.
                        return None;
                    }
                    let asked = match req.opts().get(OptionCode::RequestedIpAddress) {
                        Some(DhcpOption::RequestedIpAddress(a)) => *a,
                        _ => req.ciaddr(),
                    };
                    if asked == address {
                        MessageType::Ack
                    } else {
                        MessageType::Nak
                    }
                }
                _ => return None,
            };
            let mut m = reply(cfg, req, reply_kind);
            if reply_kind == MessageType::Nak {
                return Some((m, Destination::Broadcast));
            }
            m.set_yiaddr(address);
            let secs = u32::try_from(pool.lease.as_secs()).unwrap_or(u32::MAX);
            let o = m.opts_mut();
            o.insert(DhcpOption::AddressLeaseTime(secs));
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding(secs / 8 * 7));
            o.insert(DhcpOption::SubnetMask(pool.netmask));
            if let Some(r) = pool.router {
                o.insert(DhcpOption::Router(vec![r]));
            }
            if !pool.dns.is_empty() {
                o.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
            }
            if let Some(file) = &file {
                boot_options(cfg, &mut m, file, fw != Firmware::NotPxe);
            }
            Some((m, destination(req)))
        }
    }
}

/// A reply of `kind` to `req`: same transaction, same client.
fn reply(cfg: &Config, req: &Message, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.clear_addrs();
    m.set_giaddr(req.giaddr());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(cfg.server));
    // A client identifier is echoed (RFC 6842).
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = req.opts().get(OptionCode::ClientIdentifier)
    {
        o.insert(id.clone());
    }
    m
}

fn boot_options(cfg: &Config, m: &mut Message, file: &str, pxe: bool) {
    m.set_siaddr(cfg.server);
    m.set_fname_str(file);
    let o = m.opts_mut();
    o.insert(DhcpOption::TFTPServerName(
        cfg.server.to_string().into_bytes(),
    ));
    o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    if pxe {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
}

fn destination(req: &Message) -> Destination {
    if !req.giaddr().is_unspecified() {
        return Destination::To(SocketAddrV4::new(req.giaddr(), 67));
    }
    if !req.ciaddr().is_unspecified() && !req.flags().broadcast() {
        return Destination::To(SocketAddrV4::new(req.ciaddr(), 68));
    }
    Destination::Broadcast
}

/// Opens a DHCP socket on `port` (the server port 67, or [`PXE_PORT`]) of
/// the PXE network's `interface`: bound to the device, so that it hears
/// clients' broadcasts there only and its own broadcasts leave there
/// (the limited broadcast has no route). Call it inside the PXE network's
/// namespace when that is not this one.
pub fn bind(port: u16, interface: &str) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A running DHCP server; stopped when dropped.
pub struct Dhcp {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dhcp {
    /// Serves `sockets` (from [`bind`]: port 67, and in proxy mode
    /// [`PXE_PORT`] too).
    pub fn start<D: Directory>(
        cfg: Config,
        directory: D,
        sockets: Vec<UdpSocket>,
    ) -> std::io::Result<Self> {
        let cfg = Arc::new(cfg);
        let directory = Arc::new(directory);
        let mut tasks = Vec::new();
        for s in sockets {
            let port = s.local_addr()?.port();
            let socket = Arc::new(tokio::net::UdpSocket::from_std(s)?);
            tasks.push(tokio::spawn(serve(
                cfg.clone(),
                directory.clone(),
                socket,
                port,
            )));
        }
        tracing::info!(server = %cfg.server, mode = match cfg.mode { Mode::Full(_) => "full", Mode::Proxy => "proxy" }, "DHCP serving");
        Ok(Self { tasks })
    }
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve<D: Directory>(
    cfg: Arc<Config>,
    directory: Arc<D>,
    socket: Arc<tokio::net::UdpSocket>,
    port: u16,
) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DHCP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let Some(req) = buf.get(..n).and_then(decode) else {
            continue;
        };
        let Some(mac) = client_mac(&req) else {
            continue;
        };
        let pool = match &cfg.mode {
            Mode::Full(p) => Some(p),
            Mode::Proxy => None,
        };
        let found = match directory.lookup(mac, pool).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%mac, error = %e, "DHCP: cannot look the machine up; not answering");
                continue;
            }
        };
        if found == Lookup::Unknown {
            tracing::debug!(%mac, "DHCP: unknown MAC, no answer");
            continue;
        }
        let Some((reply, to)) = answer(&cfg, &req, from, port, &found) else {
            continue;
        };
        let Ok(bytes) = reply.to_vec() else { continue };
        let to = match to {
            Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            Destination::To(a) => a,
        };
        tracing::info!(%mac, firmware = ?firmware(&req), kind = ?reply.opts().msg_type(), yiaddr = %reply.yiaddr(), file = ?reply.fname_str(), "DHCP answer");
        if let Err(e) = socket.send_to(&bytes, to).await {
            tracing::warn!(%mac, %to, error = %e, "DHCP send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, Flags};

    const MAC: Mac = Mac([0x52, 0x54, 0, 0xaa, 0, 1]);

    fn cfg(mode: Mode) -> Config {
        Config {
            server: Ipv4Addr::new(10, 0, 0, 2),
            mode,
            boot: Boot {
                http_base: "http://10.0.0.2:8080".into(),
                ..Boot::default()
            },
        }
    }

    fn pool() -> Pool {
        Pool {
            first: Ipv4Addr::new(10, 0, 0, 100),
            last: Ipv4Addr::new(10, 0, 0, 110),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![],
            lease: Duration::from_secs(3600),
        }
    }

    fn request(
        kind: MessageType,
        class: Option<&[u8]>,
        arch: Option<u16>,
        user: Option<&[u8]>,
    ) -> Message {
        let mut m = Message::default();
        m.set_chaddr(&MAC.0)
            .set_xid(7)
            .set_flags(Flags::default().set_broadcast());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        if let Some(c) = class {
            o.insert(DhcpOption::ClassIdentifier(c.to_vec()));
        }
        if let Some(a) = arch {
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
        }
        if let Some(u) = user {
            o.insert(DhcpOption::UserClass(u.to_vec()));
        }
        // Through the wire and back, as the server sees it.
        decode(&m.to_vec().expect("encode")).expect("decode")
    }

    const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    const KNOWN: Lookup = Lookup::Known {
        address: Some(Ipv4Addr::new(10, 0, 0, 105)),
    };

    #[test]
    fn unknown_macs_get_nothing_in_either_mode() {
        let req = request(
            MessageType::Discover,
            Some(b"PXEClient:Arch:00000"),
            Some(0),
            None,
        );
        for mode in [Mode::Proxy, Mode::Full(pool())] {
            assert!(answer(&cfg(mode), &req, FROM, 67, &Lookup::Unknown).is_none());
        }
    }

    #[test]
    fn each_firmware_gets_its_boot_file() {
        let c = cfg(Mode::Full(pool()));
        // (class identifier, architecture, user class, the boot file)
        type Case<'a> = (
            Option<&'a [u8]>,
            Option<u16>,
            Option<&'a [u8]>,
            Option<&'a str>,
        );
        let cases: [Case; 5] = [
            (
                Some(b"PXEClient:Arch:00000:UNDI:002001"),
                Some(0),
                None,
                Some("undionly.kpxe"),
            ),
            (
                Some(b"PXEClient:Arch:00007:UNDI:003016"),
                Some(7),
                None,
                Some("ipxe.efi"),
            ),
            (
                Some(b"PXEClient:Arch:00009"),
                Some(9),
                None,
                Some("ipxe.efi"),
            ),
            (
                Some(b"PXEClient:Arch:00000:UNDI:002001"),
                Some(0),
                Some(b"iPXE"),
                Some("http://10.0.0.2:8080/boot.ipxe?mac=52:54:00:aa:00:01"),
            ),
            (None, None, None, None),
        ];
        for (class, arch, user, want) in cases {
            let req = request(MessageType::Discover, class, arch, user);
            let (m, to) = answer(&c, &req, FROM, 67, &KNOWN).expect("an offer");
            assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
            assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 0, 105));
            assert_eq!(to, Destination::Broadcast);
            let file = m.fname_str().and_then(Result::ok).map(str::to_owned);
            assert_eq!(
                file.as_deref(),
                want,
                "class {class:?} arch {arch:?} user {user:?}"
            );
            if want.is_some() {
                assert_eq!(m.siaddr(), c.server);
            }
        }
        // An architecture without a boot file still gets its address.
        let req = request(
            MessageType::Discover,
            Some(b"PXEClient:Arch:00011"),
            Some(11),
            None,
        );
        let (m, _) = answer(&c, &req, FROM, 67, &KNOWN).expect("an offer");
        assert_eq!(m.fname(), None);
    }

    #[test]
    fn full_mode_acks_only_the_address_it_holds() {
        let c = cfg(Mode::Full(pool()));
        let mut req = request(MessageType::Request, None, None, None);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 105)));
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(c.server));
        let (m, _) = answer(&c, &req, FROM, 67, &KNOWN).expect("ack");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(
            m.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            m.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );

        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 106)));
        let (m, _) = answer(&c, &req, FROM, 67, &KNOWN).expect("nak");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);

        // Another server's offer was taken: stay silent.
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 3)));
        assert!(answer(&c, &req, FROM, 67, &KNOWN).is_none());

        // No address (outside the pool, or none free): no offer.
        let req = request(MessageType::Discover, None, None, None);
        let outside = Lookup::Known {
            address: Some(Ipv4Addr::new(10, 0, 1, 5)),
        };
        assert!(answer(&c, &req, FROM, 67, &outside).is_none());
        assert!(answer(&c, &req, FROM, 67, &Lookup::Known { address: None }).is_none());
    }

    #[test]
    fn proxy_mode_gives_boot_files_to_pxe_clients_only_and_no_address() {
        let c = cfg(Mode::Proxy);
        let known = Lookup::Known { address: None };
        let req = request(
            MessageType::Discover,
            Some(b"PXEClient:Arch:00000:UNDI:002001"),
            Some(0),
            None,
        );
        let (m, to) = answer(&c, &req, FROM, 67, &known).expect("proxy offer");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(to, Destination::Broadcast);
        assert_eq!(
            m.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            m.opts().get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        assert_eq!(m.fname_str().and_then(Result::ok), Some("undionly.kpxe"));
        assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());

        // The boot-server request on 4011 is answered to its sender.
        let req = request(
            MessageType::Request,
            Some(b"PXEClient:Arch:00000"),
            Some(0),
            Some(b"iPXE"),
        );
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68);
        let (m, to) = answer(&c, &req, from, PXE_PORT, &known).expect("proxy ack");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(to, Destination::To(from));
        // ... but a request on 67 is the site server's business.
        assert!(answer(&c, &req, from, 67, &known).is_none());

        // An OS's DHCP client gets nothing from a proxy.
        let req = request(MessageType::Discover, None, None, None);
        assert!(answer(&c, &req, FROM, 67, &known).is_none());
    }

    #[test]
    fn junk_is_not_a_message() {
        // What the fuzz target found: option 154 (Bulk Leasequery base
        // time) two bytes long, which dhcproto asserts is four.
        let mut m = request(MessageType::Discover, None, None, None)
            .to_vec()
            .expect("encode");
        m.pop();
        m.extend_from_slice(&[154, 2, 0, 0, 255]);
        assert!(decode(&m).is_none());
        // And a hardware address length over 16, which dhcproto's
        // chaddr() would slice past its 16 bytes.
        let mut m = request(MessageType::Discover, None, None, None)
            .to_vec()
            .expect("encode");
        m[2] = 31;
        assert!(decode(&m).is_none());
        assert!(decode(b"").is_none());
        assert!(decode(&[1u8; 20]).is_none());
        let mut m = request(MessageType::Discover, None, None, None);
        m.set_opcode(Opcode::BootReply);
        assert!(client_mac(&m).is_none());
    }

    #[test]
    fn macs_and_ranges_parse() {
        assert_eq!("52-54-00-AA-00-01".parse::<Mac>(), Ok(MAC));
        assert_eq!(MAC.to_string(), "52:54:00:aa:00:01");
        assert!("52:54:00:aa:00".parse::<Mac>().is_err());
        assert!("52:54:00:aa:00:1".parse::<Mac>().is_err());
        assert_eq!(
            parse_range("10.0.0.10-10.0.0.20"),
            Ok((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20)))
        );
        assert!(parse_range("10.0.0.20-10.0.0.10").is_err());
        assert!(parse_range("10.0.0.20").is_err());
    }
}
