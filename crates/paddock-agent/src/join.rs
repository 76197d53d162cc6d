//! Joining by netboot: a host booted from Paddock's host image has, on its
//! kernel command line, a single-use join token, the netboot endpoint, the
//! API's URL and the SHA-256 of the management plane's CA. It fetches the
//! CA from the netboot endpoint (plain HTTP), trusts it only if the hash
//! matches, and then, over TLS checked against that CA, exchanges the
//! token for its host credential (`POST /paddock/v1/join`).

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What the command line gives.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// The netboot endpoint (`http://10.0.0.2:8080`), which serves `/ca.crt`.
    pub netboot: String,
    /// The management API (`https://10.0.0.2:6443`).
    pub api: String,
    /// Hex SHA-256 of the CA certificate's PEM.
    pub ca_sha256: String,
    pub token: String,
}

/// What a join gives: the host's name, its credential (a bearer token for
/// user `host:<host>`), and the CA it was checked against.
#[derive(Debug, Clone)]
pub struct Joined {
    pub host: String,
    pub token: String,
    pub ca_pem: String,
}

#[derive(Deserialize)]
struct Exchanged {
    host: String,
    token: String,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Hex SHA-256 of `pem`, as the command line carries it.
pub fn ca_hash(pem: &str) -> String {
    hex(&Sha256::digest(pem.as_bytes()))
}

/// Exchanges the join token for the host's credential.
pub async fn join(p: &JoinParams) -> anyhow::Result<Joined> {
    let netboot: http::Uri = p
        .netboot
        .parse()
        .with_context(|| format!("netboot URL {:?}", p.netboot))?;
    let plain =
        kube::Client::try_from(kube::Config::new(netboot)).context("netboot HTTP client")?;
    let pem = plain
        .request_text(
            http::Request::get("/ca.crt")
                .body(Vec::new())
                .context("request")?,
        )
        .await
        .with_context(|| format!("fetching {}/ca.crt", p.netboot))?;
    let got = ca_hash(&pem);
    if !got.eq_ignore_ascii_case(p.ca_sha256.trim()) {
        bail!(
            "the CA served at {}/ca.crt has SHA-256 {got}, not {} as the command line says: not trusting it",
            p.netboot,
            p.ca_sha256
        );
    }
    let der: Vec<Vec<u8>> = pem_certs(&pem)?;
    let api: http::Uri = p
        .api
        .parse()
        .with_context(|| format!("API URL {:?}", p.api))?;
    let mut cfg = kube::Config::new(api);
    cfg.root_cert = Some(der);
    let client = kube::Client::try_from(cfg).context("API client")?;
    let body = serde_json::to_vec(&serde_json::json!({"token": p.token}))?;
    let joined: Exchanged = client
        .request(
            http::Request::post("/paddock/v1/join")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .context("request")?,
        )
        .await
        .context("exchanging the join token")?;
    Ok(Joined {
        host: joined.host,
        token: joined.token,
        ca_pem: pem,
    })
}

fn pem_certs(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .context("the CA certificate is not valid PEM")?;
    if certs.is_empty() {
        bail!("the CA certificate is not valid PEM");
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pems_and_hashes() {
        assert!(pem_certs("junk").is_err());
        assert_eq!(
            ca_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
