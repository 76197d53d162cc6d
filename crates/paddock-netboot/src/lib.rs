//! Netboot services for bare-metal hosts, run by `paddock server` on the
//! PXE network's interface. So far: [`tftp`], which serves the iPXE
//! binaries (Debian's `ipxe` package) read-only to the machines' PXE ROMs.
//! DHCP and the per-machine iPXE script over HTTP come next.

pub mod tftp;

/// Why a netboot service could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    #[error("TFTP root {path}: {reason}")]
    Root { path: String, reason: String },
    #[error("TFTP cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}
