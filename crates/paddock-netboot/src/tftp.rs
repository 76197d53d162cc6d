//! A read-only TFTP server (RFC 1350 with the option extension, blksize,
//! timeout, tsize and windowsize: RFCs 2347–2349 and 7440) for one
//! directory, through the `async-tftp` crate. Paths that leave the
//! directory are refused by it; writes are refused (read-only handler).

use std::net::SocketAddr;
use std::path::Path;

use async_tftp::server::TftpServerBuilder;

use crate::NetbootError;

/// A running TFTP server; stopped when dropped.
pub struct Tftp {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Tftp {
    /// Serves the files of `root` on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr, root: &Path) -> Result<Self, NetbootError> {
        if !root.is_dir() {
            return Err(NetbootError::Root {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        let server = TftpServerBuilder::with_dir_ro(root)
            .map_err(|e| NetbootError::Root {
                path: root.display().to_string(),
                reason: e.to_string(),
            })?
            .bind(listen)
            .build()
            .await
            .map_err(|e| NetbootError::Listen {
                addr: listen.to_string(),
                reason: e.to_string(),
            })?;
        let addr = server.listen_addr().map_err(|e| NetbootError::Listen {
            addr: listen.to_string(),
            reason: e.to_string(),
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve().await {
                tracing::error!(error = %e, "TFTP server stopped");
            }
        });
        tracing::info!(%addr, root = %root.display(), "TFTP serving");
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
