//! Source guards: a VM may send only from its own MAC and IP (and, for a
//! Kubernetes node, from its cluster's pod range, whose packets it routes).
//! The bridge port of its tap is locked to its MAC (netlink, see
//! `Net::ensure_tap`); an nftables bridge table drops frames from a tap
//! whose source MAC, IPv4 source or ARP sender address is not the VM's,
//! and anything but IPv4 and ARP. Applied atomically with `nft -f`, as one
//! table Paddock owns.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::Mac;

/// Paddock's nftables table (bridge family).
pub const TABLE: &str = "paddock";

/// What one tap may send.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceGuard {
    pub tap: String,
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
    /// A range the VM routes for and may send from too: its cluster's
    /// pods, whose traffic between nodes keeps the pods' addresses. ARP
    /// stays the VM's own.
    pub routed: Option<Ipv4Range>,
}

/// An IPv4 range, `192.168.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Range {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 range"))?;
        let net: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 range"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} is not an IPv4 range"))?;
        // The network address, whatever host bits were given.
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Ipv4Range {
            net: Ipv4Addr::from(u32::from(net) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("running nft (install the nftables package)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the source guards: {0}")]
    Nft(String),
}

/// The nft script that makes the table exactly `guards` (or removes it).
pub fn render(guards: &[SourceGuard]) -> String {
    let mut s = format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n");
    if guards.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "table bridge {TABLE} {{\n  chain guard {{\n    type filter hook prerouting priority -200; policy accept;"
    );
    for g in guards {
        let t = &g.tap;
        let _ = writeln!(s, "    iifname \"{t}\" ether saddr != {} drop", g.mac);
        if let Some(ip) = g.ip {
            match g.routed {
                Some(r) => {
                    let _ = writeln!(
                        s,
                        "    iifname \"{t}\" ether type ip ip saddr != {{ {ip}, {r} }} drop"
                    );
                }
                None => {
                    let _ = writeln!(s, "    iifname \"{t}\" ether type ip ip saddr != {ip} drop");
                }
            }
            let _ = writeln!(
                s,
                "    iifname \"{t}\" ether type arp arp saddr ip != {ip} drop"
            );
        }
        let _ = writeln!(s, "    iifname \"{t}\" ether type != {{ ip, arp }} drop");
    }
    s.push_str("  }\n}\n");
    s
}

/// Applies `guards` in the caller's network namespace, atomically.
pub async fn apply(guards: &[SourceGuard]) -> Result<(), GuardError> {
    let script = render(guards);
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(GuardError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(GuardError::Spawn)?;
    if !out.status.success() {
        return Err(GuardError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_block_per_tap() {
        let g = SourceGuard {
            tap: "pdtap1".into(),
            mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
            ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            routed: None,
        };
        let node = SourceGuard {
            tap: "pdtap2".into(),
            mac: Mac([0x52, 0x54, 0, 0, 0, 2]),
            ip: Some(Ipv4Addr::new(10, 0, 0, 3)),
            routed: Some("192.168.7.1/16".parse().unwrap()),
        };
        let n = render(&[node]);
        assert!(
            n.contains("ip saddr != { 10.0.0.3, 192.168.0.0/16 } drop")
                && n.contains("arp saddr ip != 10.0.0.3 drop"),
            "{n}"
        );
        let s = render(&[g]);
        assert!(
            s.contains("iifname \"pdtap1\" ether saddr != 52:54:00:00:00:01 drop"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr != 10.0.0.2 drop") && s.contains("arp saddr ip != 10.0.0.2 drop"),
            "{s}"
        );
        assert!(!render(&[]).contains("chain"));
    }
}
