//! TLS termination: a rustls acceptor in front of the router, HTTP/1.1 and
//! HTTP/2 by ALPN.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Service;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in PEM")]
    NoCertificate,
    #[error("no private key in PEM")]
    NoKey,
    #[error("invalid PEM")]
    Pem(#[source] std::io::Error),
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
}

pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(TlsError::Pem)?
        .ok_or(TlsError::NoKey)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves one accepted connection: TLS handshake, then HTTP/1.1 or HTTP/2.
/// Spawned into `conns`: when the listener's task ends, so do its
/// connections (a server that stops serves no watch it had open).
fn serve_conn<S>(
    conns: &mut JoinSet<()>,
    acceptor: TlsAcceptor,
    stream: S,
    app: Router,
    peer: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    conns.spawn(async move {
        let stream = match acceptor.accept(stream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        };
        let from = peer.clone();
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(crate::audit::Peer(from.clone()));
                app.clone().call(req)
            });
        if let Err(e) = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await
        {
            tracing::debug!(%peer, error = %e, "connection ended");
        }
    });
}

/// Accepts TCP connections until the task is dropped.
pub async fn serve(listener: TcpListener, tls: ServerConfig, app: Router) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    serve_conn(&mut conns, acceptor.clone(), tcp, app.clone(), peer.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap the connections that ended.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Accepts connections on a unix socket (the same TLS and authentication).
pub async fn serve_unix(listener: UnixListener, tls: ServerConfig, app: Router) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => serve_conn(&mut conns, acceptor.clone(), s, app.clone(), "unix".into()),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
