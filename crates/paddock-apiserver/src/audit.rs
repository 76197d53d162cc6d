//! The audit log: every request that changes something (create, update,
//! patch, delete, a kubeconfig issued, an exec or console opened) and every
//! refusal (401, 403), as one JSON line each: when, who (user and groups),
//! from where, the verb, the resource, its namespace and name, and the
//! status code. Never a body, a query string, a header value or a token:
//! nothing the log's reader could use to act as someone else.
//!
//! Left out, as routine (a Kubernetes audit policy leaves out the same):
//! the writes of the server's own controllers (their objects carry their
//! managers and Events), and host agents' Lease renewals and status writes.
//! Their refusals are recorded.
//!
//! Lines go to `<data-dir>/audit/audit.log` through one writer task, which
//! rotates the file at [`AuditConfig::max_bytes`] (`audit.log.1` is the
//! newest rotated, up to [`AuditConfig::keep`]). `GET /paddock/v1/audit`
//! (platform admins) reads them back, filtered by user, resource, verb and
//! time; `paddock audit` is its client.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::User;
use crate::error::ApiError;

/// Where a connection came from (the TLS listener sets it per request).
#[derive(Debug, Clone)]
pub struct Peer(pub String);

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// Empty when the request was not authenticated.
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The client's address (`unix` for the local socket).
    pub source: String,
    pub verb: String,
    /// The resource's plural (`nonresource` for other paths).
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request's path, without its query.
    pub path: String,
    pub code: u16,
    /// `allowed`, `refused` (401, 403) or `failed` (any other error).
    pub decision: String,
}

/// Where the log goes and how much of it is kept.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub keep: usize,
}

impl AuditConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_bytes: 100 << 20,
            keep: 10,
        }
    }
}

/// The sending side: handlers give records, the writer task writes them.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Record>,
    pub dir: PathBuf,
}

impl AuditLog {
    /// The log and its writer (to run as one of the server's tasks).
    pub fn new(cfg: AuditConfig) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(16_384);
        let dir = cfg.dir.clone();
        (Self { tx, dir }, write_all(cfg, rx))
    }

    /// Queues `r`; waits when the writer is behind rather than losing it.
    pub async fn record(&self, r: Record) {
        if self.tx.send(r).await.is_err() {
            tracing::error!("the audit log's writer has stopped; a record is lost");
        }
    }
}

fn file(dir: &Path, n: usize) -> PathBuf {
    if n == 0 {
        dir.join("audit.log")
    } else {
        dir.join(format!("audit.log.{n}"))
    }
}

fn open(dir: &Path) -> std::io::Result<(std::fs::File, u64)> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file(dir, 0))?;
    let len = f.metadata()?.len();
    Ok((f, len))
}

/// Moves `audit.log` to `audit.log.1` (and each older one up by one,
/// dropping what is beyond `keep`).
fn rotate(dir: &Path, keep: usize) -> std::io::Result<()> {
    let _ = std::fs::remove_file(file(dir, keep));
    for n in (1..keep).rev() {
        let from = file(dir, n);
        if from.exists() {
            std::fs::rename(&from, file(dir, n + 1))?;
        }
    }
    std::fs::rename(file(dir, 0), file(dir, 1))
}

/// The writer: appends each record as a line, flushed before the next batch.
async fn write_all(cfg: AuditConfig, mut rx: mpsc::Receiver<Record>) {
    let (mut f, mut len) = match open(&cfg.dir) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(dir = %cfg.dir.display(), error = %e, "cannot open the audit log");
            return;
        }
    };
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 512).await > 0 {
        let records: Vec<Record> = std::mem::take(&mut batch);
        let wrote = tokio::task::block_in_place(|| -> std::io::Result<()> {
            let mut buf = Vec::new();
            for r in &records {
                let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
                line.push(b'\n');
                // A file is rotated before the line that would take it
                // past the limit.
                if len + (buf.len() + line.len()) as u64 > cfg.max_bytes
                    && len + buf.len() as u64 > 0
                {
                    f.write_all(&buf)?;
                    f.flush()?;
                    buf.clear();
                    rotate(&cfg.dir, cfg.keep)?;
                    (f, len) = open(&cfg.dir)?;
                }
                buf.extend_from_slice(&line);
            }
            f.write_all(&buf)?;
            f.flush()?;
            len += buf.len() as u64;
            Ok(())
        });
        if let Err(e) = wrote {
            tracing::error!(dir = %cfg.dir.display(), error = %e, "cannot write the audit log");
        }
    }
}

/// What the request is, for its record: (verb, resource, subresource,
/// namespace, name).
fn describe(
    req: &Request,
) -> (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    let method = req.method();
    match crate::route::parse(req.uri().path()) {
        Ok(t) => (
            t.verb(method, false).to_owned(),
            t.res.plural.to_owned(),
            t.subresource().map(str::to_owned),
            t.namespace,
            t.name,
        ),
        Err(_) => (
            method.as_str().to_lowercase(),
            "nonresource".to_owned(),
            None,
            None,
            None,
        ),
    }
}

/// Whether a request is audited whatever its answer: it changes something
/// or opens a way into a Machine.
fn changes(req: &Request) -> bool {
    req.method() != http::Method::GET
        || req.uri().path().ends_with("/console")
        || req.uri().path().ends_with("/exec")
}

fn record_of(req: &Request, user: Option<&User>, code: u16) -> Record {
    let (verb, resource, subresource, namespace, name) = describe(req);
    Record {
        time: jiff::Timestamp::now().to_string(),
        user: user.map(|u| u.name.clone()).unwrap_or_default(),
        groups: user.map(|u| u.groups.clone()).unwrap_or_default(),
        source: req
            .extensions()
            .get::<Peer>()
            .map_or_else(|| "unknown".to_owned(), |p| p.0.clone()),
        verb,
        resource,
        subresource,
        namespace,
        name,
        path: req.uri().path().to_owned(),
        code,
        decision: match code {
            401 | 403 => "refused",
            c if c >= 400 => "failed",
            _ => "allowed",
        }
        .to_owned(),
    }
}

/// The record of a request refused before anyone was known (401).
pub fn unauthenticated(req: &Request) -> Record {
    record_of(req, None, 401)
}

/// Middleware (inside authentication): records the request once answered,
/// if it changes something or was refused.
pub async fn middleware(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let audited = changes(&req);
    // What the record needs, taken before the request is consumed.
    let head = {
        let mut b = http::Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone());
        if let Some(p) = req.extensions().get::<Peer>() {
            b = b.extension(p.clone());
        }
        b.body(axum::body::Body::empty()).ok()
    };
    let user = req.extensions().get::<User>().cloned();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    if (audited || code == 401 || code == 403)
        && let Some(head) = head
    {
        let r = record_of(&head, user.as_ref(), code);
        if !routine(user.as_ref(), &r) {
            state.audit.record(r).await;
        }
    }
    resp
}

/// The platform's own bookkeeping, allowed (see the module's documentation).
fn routine(user: Option<&User>, r: &Record) -> bool {
    let Some(u) = user else { return false };
    if r.decision != "allowed" {
        return false;
    }
    let own = u.name == crate::loopback::USER || u.name == crate::loopback::CONTROLLERS;
    let agent = u.host().is_some()
        && (r.resource == "leases" || r.subresource.as_deref() == Some("status"));
    own || agent
}

/// Filters of [`query`].
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    pub user: Option<String>,
    pub resource: Option<String>,
    pub verb: Option<String>,
    pub namespace: Option<String>,
    /// RFC 3339; records at or after it.
    pub since: Option<String>,
    /// RFC 3339; records before it.
    pub until: Option<String>,
    /// At most this many (the newest); 1,000 unless given.
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(
        &self,
        r: &Record,
        since: Option<jiff::Timestamp>,
        until: Option<jiff::Timestamp>,
    ) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        let t = r.time.parse::<jiff::Timestamp>().ok();
        eq(&self.user, &r.user)
            && eq(&self.resource, &r.resource)
            && eq(&self.verb, &r.verb)
            && eq(&self.namespace, r.namespace.as_deref().unwrap_or_default())
            && since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && until.is_none_or(|u| t.is_some_and(|t| t < u))
    }
}

/// The records in `dir` that `f` selects, oldest first.
pub fn read(dir: &Path, f: &Filter) -> Result<Vec<Record>, ApiError> {
    let time = |field: &str, v: &Option<String>| -> Result<Option<jiff::Timestamp>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse::<jiff::Timestamp>().map_err(|e| {
                    ApiError::BadRequest(format!("{field}: {s:?} is not an RFC 3339 time: {e}"))
                })
            })
            .transpose()
    };
    let (since, until) = (time("since", &f.since)?, time("until", &f.until)?);
    let mut files: Vec<PathBuf> = (1..=1000)
        .map(|n| file(dir, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(file(dir, 0));
    let limit = f.limit.unwrap_or(1000);
    let mut out = std::collections::VecDeque::new();
    for p in files {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        for line in text.lines() {
            if let Ok(r) = serde_json::from_str::<Record>(line)
                && f.matches(&r, since, until)
            {
                out.push_back(r);
                if out.len() > limit {
                    out.pop_front();
                }
            }
        }
    }
    Ok(out.into())
}

/// `GET /paddock/v1/audit` (platform admins): this server's audit records.
pub async fn query(
    State(state): State<AppState>,
    axum::extract::Query(f): axum::extract::Query<Filter>,
    req: Request,
) -> Response {
    if !req.extensions().get::<User>().is_some_and(User::is_admin) {
        return ApiError::Forbidden("the audit log is for platform admins".into()).into_response();
    }
    let dir = state.audit.dir.clone();
    match tokio::task::spawn_blocking(move || read(&dir, &f)).await {
        Ok(Ok(items)) => Json(serde_json::json!({
            "kind": "AuditRecordList",
            "apiVersion": paddock_api::API_VERSION,
            "items": items,
        }))
        .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(user: &str, verb: &str, time: &str) -> Record {
        Record {
            time: time.into(),
            user: user.into(),
            groups: vec![],
            source: "127.0.0.1:1".into(),
            verb: verb.into(),
            resource: "clusters".into(),
            subresource: None,
            namespace: Some("acme".into()),
            name: Some("web".into()),
            path: "/apis/paddock.io/v1alpha1/namespaces/acme/clusters/web".into(),
            code: 200,
            decision: "allowed".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_rotate_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = AuditLog::new(AuditConfig {
            dir: dir.path().to_owned(),
            max_bytes: 600,
            keep: 3,
        });
        let task = tokio::spawn(writer);
        for i in 0..20 {
            let t = format!("2026-12-08T10:{i:02}:00Z");
            log.record(rec(if i % 2 == 0 { "alice" } else { "bob" }, "create", &t))
                .await;
            tokio::task::yield_now().await;
        }
        drop(log);
        task.await.unwrap();
        // Rotated: at most `keep` old files, none bigger than the limit
        // by more than one batch.
        assert!(file(dir.path(), 1).exists());
        assert!(!file(dir.path(), 4).exists());
        let all = read(dir.path(), &Filter::default()).unwrap();
        assert!(all.len() < 20 && all.len() >= 6, "{}", all.len());
        let times: Vec<&str> = all.iter().map(|r| r.time.as_str()).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "oldest first across files");
        assert_eq!(all.last().unwrap().time, "2026-12-08T10:19:00Z");
        let bob = read(
            dir.path(),
            &Filter {
                user: Some("bob".into()),
                since: Some("2026-12-08T10:15:00Z".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert!(
            bob.iter()
                .all(|r| r.user == "bob" && r.time.as_str() >= "2026-12-08T10:15:00Z")
        );
        assert_eq!(bob.len(), 3);
        let bad = read(
            dir.path(),
            &Filter {
                since: Some("yesterday".into()),
                ..Filter::default()
            },
        );
        assert!(matches!(bad, Err(ApiError::BadRequest(m)) if m.contains("since")));
    }

    #[test]
    fn the_platforms_bookkeeping_is_left_out_but_not_its_refusals() {
        let host = User {
            name: "host:h1".into(),
            groups: vec![crate::authz::HOSTS_GROUP.into()],
        };
        let controllers = User {
            name: crate::loopback::CONTROLLERS.into(),
            groups: vec![],
        };
        let alice = User {
            name: "alice".into(),
            groups: vec!["org:acme".into()],
        };
        let mut lease = rec("host:h1", "update", "2026-12-08T10:00:00Z");
        lease.resource = "leases".into();
        assert!(routine(Some(&host), &lease));
        assert!(routine(Some(&controllers), &rec("x", "create", "t")));
        assert!(!routine(Some(&alice), &rec("alice", "create", "t")));
        let mut refused = lease.clone();
        refused.decision = "refused".into();
        assert!(!routine(Some(&host), &refused));
        // A host creating something other than its status is recorded.
        assert!(!routine(Some(&host), &rec("host:h1", "create", "t")));
    }

    #[test]
    fn requests_are_described_without_their_query() {
        let req = http::Request::post(
            "/apis/paddock.io/v1alpha1/namespaces/acme/machines/m1/exec?token=secret",
        )
        .body(axum::body::Body::empty())
        .unwrap();
        let r = record_of(&req, None, 403);
        assert_eq!(
            (
                r.verb.as_str(),
                r.resource.as_str(),
                r.subresource.as_deref()
            ),
            ("create", "machines", Some("exec"))
        );
        assert_eq!(r.decision, "refused");
        assert!(!serde_json::to_string(&r).unwrap().contains("secret"));
    }
}
