//! Authentication: bearer tokens, stored only as SHA-256 hashes.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The group whose members may do everything.
pub const ADMIN_GROUP: &str = "system:masters";

/// One entry of the token file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// When the token stops working (RFC 3339); never when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is not valid JSON")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// Known tokens, by hash. Loaded from a token file, which is read again
/// when it changes (users added while the server runs).
#[derive(Debug, Default, Clone)]
pub struct Authenticator {
    path: Option<std::path::PathBuf>,
    inner: std::sync::Arc<std::sync::RwLock<Loaded>>,
    /// When the token file was last looked at.
    checked: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Tokens that exist only in this process's memory (the loopback
    /// client's), by hash; never written anywhere, gone with the process.
    in_memory: std::sync::Arc<std::sync::RwLock<HashMap<String, User>>>,
}

/// How often the token file is looked at for changes (removed users lose
/// access within this time).
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
struct Loaded {
    modified: Option<std::time::SystemTime>,
    by_hash: HashMap<String, (User, Option<jiff::Timestamp>)>,
}

/// Tokens by hash, with their expiry. A record whose expiry does not parse
/// is left out (its token works nowhere), and the log says so.
fn index(records: &[TokenRecord]) -> HashMap<String, (User, Option<jiff::Timestamp>)> {
    records
        .iter()
        .filter_map(|r| {
            let expires = match r.expires.as_deref().map(str::parse::<jiff::Timestamp>) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    tracing::warn!(user = %r.user, error = %e, "a token's expiry is not a time; the token is refused");
                    return None;
                }
            };
            let user = User {
                name: r.user.clone(),
                groups: r.groups.clone(),
            };
            Some((r.sha256.clone(), (user, expires)))
        })
        .collect()
}

/// Reads a token file.
pub fn read_records(path: &Path) -> Result<Vec<TokenRecord>, TokenFileError> {
    let p = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| TokenFileError::Read {
        path: p.clone(),
        source,
    })?;
    serde_json::from_slice(&raw).map_err(|source| TokenFileError::Parse { path: p, source })
}

pub fn hash_token(token: &str) -> String {
    use std::fmt::Write;
    let d = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(2 * d.len());
    for b in d {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// A new random token (256 bits, URL-safe base64).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Authenticator {
    pub fn from_records(records: &[TokenRecord]) -> Self {
        Self {
            path: None,
            inner: std::sync::Arc::new(std::sync::RwLock::new(Loaded {
                modified: None,
                by_hash: index(records),
            })),
            checked: Default::default(),
            in_memory: Default::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let records = read_records(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            inner: std::sync::Arc::new(std::sync::RwLock::new(Loaded {
                modified,
                by_hash: index(&records),
            })),
            checked: Default::default(),
            in_memory: Default::default(),
        })
    }

    /// A new random token for `user` that this process alone knows: it is
    /// kept in memory only and is not in the token file.
    pub fn issue_in_memory(&self, user: User) -> String {
        let token = generate_token();
        if let Ok(mut m) = self.in_memory.write() {
            m.insert(hash_token(&token), user);
        }
        token
    }

    /// The user whose token has SHA-256 `hash` (hex), if it is still known.
    pub fn user_by_hash(&self, hash: &str) -> Option<User> {
        self.refresh(true);
        self.lookup(hash)
    }

    fn lookup(&self, hash: &str) -> Option<User> {
        if let Some(u) = self.in_memory.read().ok()?.get(hash) {
            return Some(u.clone());
        }
        let inner = self.inner.read().ok()?;
        let (user, expires) = inner.by_hash.get(hash)?;
        // An expired token is no token.
        expires
            .is_none_or(|t| t > jiff::Timestamp::now())
            .then(|| user.clone())
    }

    /// Reads the token file again if it changed since it was last read.
    /// A file that no longer parses keeps the tokens already known.
    /// `due_only`: skip unless [`RELOAD_EVERY`] has passed since the last look.
    fn refresh(&self, due_only: bool) {
        let Some(path) = &self.path else { return };
        if let Ok(mut c) = self.checked.lock() {
            if due_only && c.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
                return;
            }
            *c = Some(std::time::Instant::now());
        }
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if self.inner.read().is_ok_and(|i| i.modified == modified) {
            return;
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if modified == inner.modified {
            return;
        }
        match read_records(path) {
            Ok(records) => {
                inner.by_hash = index(&records);
                inner.modified = modified;
                tracing::info!(path = %path.display(), users = records.len(), "token file reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "token file changed but cannot be read; keeping the old tokens")
            }
        }
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Option<User> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        // Removals take effect within RELOAD_EVERY; a token added a moment
        // ago is found by looking again on a miss (a stat, under a read lock).
        self.refresh(true);
        let hash = hash_token(token);
        self.lookup(&hash).or_else(|| {
            self.refresh(false);
            self.lookup(&hash)
        })
    }
}

/// Rejects unauthenticated requests with 401; passes the user on.
pub async fn require_user(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut user = state.auth.authenticate(header);
    if user.is_none()
        && let Some(token) = header.and_then(|h| h.strip_prefix("Bearer "))
    {
        // Host credentials issued by a netboot join live in the store.
        user = crate::join::authenticate(&state.api, token.trim()).await;
    }
    let mut by_cookie = false;
    if header.is_none() {
        // The web console's session cookie (with its CSRF token).
        match crate::session::authenticate(&state, req.headers(), req.uri()).await {
            Some(Ok(u)) => {
                by_cookie = true;
                user = Some(u);
            }
            Some(Err(why)) => {
                tracing::debug!(method = %req.method(), path = %req.uri().path(), "console session refused");
                let record = crate::audit::unauthenticated(&req);
                state.audit.record(record).await;
                return crate::session::refused(&why);
            }
            None => {}
        }
    }
    match user {
        Some(user) => {
            tracing::debug!(user = %user.name, method = %req.method(), path = %req.uri().path(), "request");
            req.extensions_mut().insert(user);
            if by_cookie {
                req.extensions_mut().insert(crate::session::ByCookie);
            }
            next.run(req).await
        }
        None => {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                token = if header.is_some() { "unknown" } else { "none" },
                "unauthenticated request refused"
            );
            let record = crate::audit::unauthenticated(&req);
            state.audit.record(record).await;
            ApiError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_tokens_are_refused() {
        let (live, dead, bad) = (generate_token(), generate_token(), generate_token());
        let rec = |t: &str, expires: &str| TokenRecord {
            user: "u".into(),
            groups: vec![],
            sha256: hash_token(t),
            expires: Some(expires.into()),
        };
        let auth = Authenticator::from_records(&[
            rec(&live, "2999-01-01T00:00:00Z"),
            rec(&dead, "2020-01-01T00:00:00Z"),
            rec(&bad, "soon"),
        ]);
        let ok = |t: &str| auth.authenticate(Some(&format!("Bearer {t}"))).is_some();
        assert!(ok(&live));
        assert!(!ok(&dead));
        assert!(!ok(&bad));
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let t = generate_token();
        let auth = Authenticator::from_records(&[TokenRecord {
            user: "admin".into(),
            groups: vec![ADMIN_GROUP.into()],
            sha256: hash_token(&t),
            expires: None,
        }]);
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {t}")))
                .map(|u| u.name),
            Some("admin".into())
        );
        assert!(auth.authenticate(Some("Bearer nope")).is_none());
        assert!(auth.authenticate(Some(&t)).is_none());
        assert!(auth.authenticate(None).is_none());
    }
}
