//! Netboot services for bare-metal hosts, run by `paddock server` on the
//! PXE network's interface: [`dhcp`] (a full server or proxyDHCP) tells a
//! registered machine's PXE ROM where to boot from, [`tftp`] serves it the
//! iPXE binaries (Debian's `ipxe` package), and [`http`] gives iPXE the
//! machine's script and the host image.

pub mod dhcp;
pub mod http;
pub mod tftp;

/// Why a netboot service could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    #[error("TFTP root {path}: {reason}")]
    Root { path: String, reason: String },
    #[error("TFTP cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}
