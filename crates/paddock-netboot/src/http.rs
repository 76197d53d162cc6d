//! The netboot HTTP endpoint, plain HTTP on the PXE network (as PXE ROMs
//! and iPXE fetch): each machine's iPXE script at `/boot.ipxe?mac=MAC`,
//! the host image at `/images/<file>` (with range requests), and the
//! server's CA certificate at `/ca.crt`, which a booted host checks
//! against the hash on its command line before it trusts the API.
//!
//! Nothing secret is served but the script's join token, which is
//! short-lived, single-use and good only for that machine's Host; a MAC
//! the [`Scripts`] does not know gets 404.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::dhcp::{DirectoryError, Mac};

/// Gives each machine its iPXE script.
pub trait Scripts: Send + Sync + 'static {
    /// The script for `mac`, or `None` for a machine that is not to boot
    /// Paddock's host image now (unknown, or not being provisioned).
    fn script(
        &self,
        mac: Mac,
    ) -> impl std::future::Future<Output = Result<Option<String>, DirectoryError>> + Send;
}

/// What a host's iPXE script says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// This endpoint's base URL (`http://10.0.0.2:8080`).
    pub base: String,
    /// The Host the machine joins as.
    pub host: String,
    /// Its single-use join token.
    pub join_token: String,
    /// The management API the agent joins (`https://10.0.0.2:6443`).
    pub api: String,
    /// Hex SHA-256 of the CA certificate's PEM, as served at `/ca.crt`.
    pub ca_sha256: String,
    /// Extra kernel command line (a console, say).
    pub cmdline: String,
}

/// The kernel command line's keys that the host image reads.
pub mod cmdline {
    pub const HOST: &str = "paddock.host";
    pub const JOIN: &str = "paddock.join";
    pub const API: &str = "paddock.api";
    pub const NETBOOT: &str = "paddock.netboot";
    pub const CA_SHA256: &str = "paddock.ca-sha256";
}

impl Script {
    pub fn render(&self) -> String {
        let Script {
            base,
            host,
            join_token,
            api,
            ca_sha256,
            cmdline: extra,
        } = self;
        format!(
            "#!ipxe\n\
             echo Paddock: {host} boots the host image\n\
             kernel {base}/images/vmlinuz initrd=initrd.img {extra} {h}={host} {j}={join_token} {a}={api} {n}={base} {c}={ca_sha256}\n\
             initrd {base}/images/initrd.img\n\
             boot\n",
            h = cmdline::HOST,
            j = cmdline::JOIN,
            a = cmdline::API,
            n = cmdline::NETBOOT,
            c = cmdline::CA_SHA256,
        )
    }
}

/// A running endpoint; stopped when dropped.
pub struct Http {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

struct Shared<S> {
    scripts: S,
    ca_pem: String,
}

#[derive(serde::Deserialize)]
struct BootQuery {
    mac: String,
}

impl Http {
    /// Serves on `listener` (made where the PXE network is): scripts from
    /// `scripts`, the files of `images` under `/images/`, and `ca_pem`.
    pub fn start<S: Scripts>(
        listener: std::net::TcpListener,
        images: Option<PathBuf>,
        ca_pem: String,
        scripts: S,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared { scripts, ca_pem });
        let mut app = axum::Router::new()
            .route("/boot.ipxe", get(boot::<S>))
            .route("/ca.crt", get(ca::<S>))
            .with_state(shared);
        if let Some(dir) = images {
            app = app.nest_service("/images", tower_http::services::ServeDir::new(dir));
        }
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "netboot HTTP stopped");
            }
        });
        tracing::info!(%addr, "netboot HTTP serving");
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn boot<S: Scripts>(State(s): State<Arc<Shared<S>>>, Query(q): Query<BootQuery>) -> Response {
    let Ok(mac) = q.mac.parse::<Mac>() else {
        return (StatusCode::BAD_REQUEST, "mac: not a MAC address\n").into_response();
    };
    match s.scripts.script(mac).await {
        Ok(Some(script)) => {
            tracing::info!(%mac, "netboot: iPXE script served");
            ([(header::CONTENT_TYPE, "text/plain")], script).into_response()
        }
        Ok(None) => {
            tracing::info!(%mac, "netboot: no script for this machine");
            StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::warn!(%mac, error = %e, "netboot: cannot make the script");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}

async fn ca<S: Scripts>(State(s): State<Arc<Shared<S>>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.ca_pem.clone(),
    )
        .into_response()
}
