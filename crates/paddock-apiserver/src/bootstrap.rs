//! First start of a server: the data directory with its CA, serving
//! certificate, admin token and `admin.kubeconfig`; the system namespaces.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use paddock_pki::{Ca, CertPair, PkiError, SERVING_VALIDITY};
use serde_json::json;

use crate::api::{Api, WriteOptions};
use crate::auth::{
    ADMIN_GROUP, Authenticator, TokenFileError, TokenRecord, generate_token, hash_token,
};
use crate::error::ApiError;
use crate::resources;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("file {0}")]
    Io(String, #[source] std::io::Error),
    #[error("certificates")]
    Pki(#[from] PkiError),
    #[error("tokens")]
    Tokens(#[from] TokenFileError),
    #[error("encryption key {0}: {1}")]
    Key(String, String),
}

/// The files of a server's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
    pub ca_pem: String,
    pub serving: CertPair,
    pub authenticator: Authenticator,
    /// URL clients use to reach this server.
    pub url: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BootstrapError + '_ {
    move |e| BootstrapError::Io(path.display().to_string(), e)
}

/// Writes a private file atomically (0600, temp file then rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), BootstrapError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The key that seals Secrets at rest: read from `path`, or made there
/// (0600) when the file does not exist. A file of the wrong size is an error,
/// never silently replaced: the store's Secrets would no longer open.
pub fn sealing_key(path: &Path) -> Result<paddock_store::SealingKey, BootstrapError> {
    use paddock_store::encrypted::KEY_LEN;
    let bad = |why: String| BootstrapError::Key(path.display().to_string(), why);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let b = paddock_store::SealingKey::generate().map_err(|e| bad(e.to_string()))?;
            write_private(path, &b)?;
            tracing::info!(path = %path.display(), "made a new key for Secrets at rest");
            b.to_vec()
        }
        Err(e) => return Err(BootstrapError::Io(path.display().to_string(), e)),
    };
    if bytes.len() != KEY_LEN {
        return Err(bad(format!(
            "holds {} bytes; a key is {KEY_LEN} random bytes",
            bytes.len()
        )));
    }
    paddock_store::SealingKey::from_bytes(&bytes).ok_or_else(|| bad("not a usable key".into()))
}

/// A kubeconfig for `url` with a bearer token.
pub fn kubeconfig(url: &str, ca_pem: &str, name: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {user}\n    namespace: default\n\
         current-context: {name}\n"
    )
}

impl DataDir {
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }

    /// Makes what is missing; reissues the serving certificate for `addr` and `sans`.
    pub fn prepare(root: &Path, addr: SocketAddr, sans: &[String]) -> Result<Self, BootstrapError> {
        let pki = root.join("pki");
        std::fs::create_dir_all(&pki).map_err(io(&pki))?;
        let (ca_crt, ca_key) = (pki.join("ca.crt"), pki.join("ca.key"));
        let ca = if ca_crt.exists() && ca_key.exists() {
            let c = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
            let k = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
            Ca::from_pem(&c, &k)?
        } else {
            let ca = Ca::generate("paddock-ca")?;
            write_private(&ca_key, ca.key_pem().as_bytes())?;
            std::fs::write(&ca_crt, ca.cert_pem()).map_err(io(&ca_crt))?;
            ca
        };
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            host.clone(),
        ];
        if addr.ip().is_unspecified() {
            names.push(addr.ip().to_string());
        }
        names.extend(sans.iter().cloned());
        names.sort();
        names.dedup();
        // The certificate is issued again for today's names; the key pair
        // stays (clients, browsers among them, may pin it).
        let key_file = pki.join("apiserver.key");
        let serving = match std::fs::read_to_string(&key_file) {
            Ok(key) => ca
                .issue_server_for_key("paddock-apiserver", &names, SERVING_VALIDITY, &key)
                .or_else(|e| {
                    tracing::warn!(error = %e, file = %key_file.display(), "the serving key cannot be read; making a new one");
                    ca.issue_server("paddock-apiserver", &names, SERVING_VALIDITY)
                })?,
            Err(_) => ca.issue_server("paddock-apiserver", &names, SERVING_VALIDITY)?,
        };
        write_private(&key_file, serving.key_pem.as_bytes())?;
        std::fs::write(pki.join("apiserver.crt"), &serving.cert_pem).map_err(io(&pki))?;

        let url = if host.contains(':') {
            format!("https://[{host}]:{}", addr.port())
        } else {
            format!("https://{host}:{}", addr.port())
        };
        let tokens = root.join("tokens.json");
        let kc = root.join("admin.kubeconfig");
        if !tokens.exists() {
            let token = generate_token();
            let rec = vec![TokenRecord {
                user: "admin".into(),
                groups: vec![ADMIN_GROUP.into()],
                sha256: hash_token(&token),
                expires: None,
            }];
            let raw = serde_json::to_vec_pretty(&rec)
                .map_err(|e| BootstrapError::Io(tokens.display().to_string(), e.into()))?;
            write_private(&tokens, &raw)?;
            write_private(
                &kc,
                kubeconfig(&url, ca.cert_pem(), "paddock", "admin", &token).as_bytes(),
            )?;
        } else if let Ok(old) = std::fs::read_to_string(&kc) {
            // Keep the token; point the kubeconfig at the current address.
            if let Some(token) = old.lines().find_map(|l| l.trim().strip_prefix("token: ")) {
                let token = token.to_owned();
                write_private(
                    &kc,
                    kubeconfig(&url, ca.cert_pem(), "paddock", "admin", &token).as_bytes(),
                )?;
            }
        }
        let authenticator = Authenticator::load(&tokens)?;
        Ok(Self {
            root: root.to_owned(),
            ca_pem: ca.cert_pem().to_owned(),
            serving,
            authenticator,
            url,
        })
    }
}

/// What the servers of one management plane share, under each one's data
/// directory: the CA, the token file, the sealing key and the admin
/// kubeconfig (which each server points at itself).
pub const SHARED_FILES: [&str; 5] = [
    "pki/ca.crt",
    "pki/ca.key",
    "tokens.json",
    "secrets.key",
    "admin.kubeconfig",
];

/// Gives the server of data directory `to` what the one of `from` has of
/// [`SHARED_FILES`] (before it first starts: it then issues its own
/// serving certificate from the shared CA).
pub fn share(from: &Path, to: &Path) -> Result<(), BootstrapError> {
    for f in SHARED_FILES {
        let (src, dst) = (from.join(f), to.join(f));
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let data = std::fs::read(&src).map_err(io(&src))?;
        write_private(&dst, &data)?;
    }
    Ok(())
}

/// Adds a user with a new token to the data directory's token file (a
/// running server picks it up) and returns a kubeconfig for that user.
pub fn add_user(root: &Path, user: &str, groups: &[String]) -> Result<String, BootstrapError> {
    add_user_for(root, user, groups, None)
}

/// [`add_user`], with a token that stops working after `ttl` when given.
pub fn add_user_for(
    root: &Path,
    user: &str,
    groups: &[String],
    ttl: Option<std::time::Duration>,
) -> Result<String, BootstrapError> {
    let tokens = root.join("tokens.json");
    let expires = ttl
        .map(|ttl| {
            jiff::SignedDuration::try_from(ttl)
                .ok()
                .and_then(|d| jiff::Timestamp::now().checked_add(d).ok())
                .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
                .ok_or_else(|| {
                    BootstrapError::Io(
                        tokens.display().to_string(),
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("a token's lifetime of {ttl:?} is out of range"),
                        ),
                    )
                })
        })
        .transpose()?;
    let mut records = crate::auth::read_records(&tokens)?;
    if records.iter().any(|r| r.user == user) {
        return Err(BootstrapError::Io(
            tokens.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("user {user:?} already exists"),
            ),
        ));
    }
    let token = generate_token();
    records.push(TokenRecord {
        user: user.to_owned(),
        groups: groups.to_vec(),
        sha256: hash_token(&token),
        expires,
    });
    let raw = serde_json::to_vec_pretty(&records)
        .map_err(|e| BootstrapError::Io(tokens.display().to_string(), e.into()))?;
    write_private(&tokens, &raw)?;
    let admin = root.join("admin.kubeconfig");
    let kc = std::fs::read_to_string(&admin).map_err(io(&admin))?;
    let url = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap_or("https://127.0.0.1:6443")
        .to_owned();
    let ca_path = root.join("pki").join("ca.crt");
    let ca = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    Ok(kubeconfig(&url, &ca, "paddock", user, &token))
}

/// Removes every token of `user` from the token file (a running server
/// stops accepting them within a second); how many there were. None is an
/// error that says so.
pub fn revoke_user(root: &Path, user: &str) -> Result<usize, BootstrapError> {
    let tokens = root.join("tokens.json");
    let mut records = crate::auth::read_records(&tokens)?;
    let before = records.len();
    records.retain(|r| r.user != user);
    let removed = before - records.len();
    if removed == 0 {
        return Err(BootstrapError::Io(
            tokens.display().to_string(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("user {user:?} has no token here"),
            ),
        ));
    }
    let raw = serde_json::to_vec_pretty(&records)
        .map_err(|e| BootstrapError::Io(tokens.display().to_string(), e.into()))?;
    write_private(&tokens, &raw)?;
    Ok(removed)
}

/// Adds the credential of host `host`'s agent (user `host:<host>`, group
/// `paddock:hosts`: it may act only for that host, see [`crate::authz`])
/// and returns a kubeconfig for it.
pub fn add_host(root: &Path, host: &str) -> Result<String, BootstrapError> {
    add_user(
        root,
        &crate::authz::host_user(host),
        &[crate::authz::HOSTS_GROUP.to_owned()],
    )
}

/// Creates `default` and `paddock-system` if they are missing.
pub async fn ensure_system_namespaces(api: &Api) {
    let Some(ns) = resources::find("", "v1", "namespaces") else {
        return;
    };
    for name in ["default", "paddock-system"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match api.create(ns, None, obj, WriteOptions::default()).await {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => {
                tracing::warn!(namespace = name, error = %e, "cannot create system namespace")
            }
        }
    }
}
