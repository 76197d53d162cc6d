//! The server's Prometheus metrics: `GET /metrics` (for platform admins and
//! the group [`MONITORING_GROUP`]), what every API request and watch
//! records, the store's commit latency, and the fleet's gauges read from
//! the watch cache every [`FLEET_EVERY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use paddock_metrics::{
    CertificateExpiry, ClusterState, Fleet, HostState, MachineState, OpLabels, RequestLabels,
    RouteLabels,
};
use paddock_store::{
    DynStore, Fence, KeyValue, Page, Precondition, Result as StoreResult, Revision, Store,
    StoreError, Watch,
};
use serde_json::Value;

use crate::AppState;
use crate::api::{Api, ListOptions};
use crate::auth::User;
use crate::error::ApiError;

/// Members of this group may read `/metrics` (as kube-apiserver's
/// `system:monitoring` does).
pub const MONITORING_GROUP: &str = "system:monitoring";

/// How often the fleet's gauges are read again.
pub const FLEET_EVERY: Duration = Duration::from_secs(10);

/// Refuses whoever is neither a platform admin nor in [`MONITORING_GROUP`].
fn monitoring_only(req: &Request) -> Result<(), ApiError> {
    let allowed = req
        .extensions()
        .get::<User>()
        .is_some_and(|u| u.is_admin() || u.groups.iter().any(|g| g == MONITORING_GROUP));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "metrics are for the group {MONITORING_GROUP:?} and platform admins"
        )))
    }
}

/// `GET /paddock/v1/hosts/{host}/metrics`: the metrics of that host's agent,
/// fetched from it at the endpoint it reported (agents need not be
/// reachable by Prometheus, only by the server).
pub async fn host(
    State(state): State<AppState>,
    axum::extract::Path(host): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = monitoring_only(&req) {
        return e.into_response();
    }
    match crate::agent_proxy::send(
        &state.api,
        &host,
        http::Method::GET,
        "/metrics",
        &Bytes::new(),
        Duration::from_secs(10),
    )
    .await
    {
        Ok((status, ct, body)) if status.is_success() => {
            let mut r = (status, body).into_response();
            if let Some(ct) = ct {
                r.headers_mut().insert(http::header::CONTENT_TYPE, ct);
            }
            r
        }
        Ok((status, _, body)) => ApiError::Unavailable(format!(
            "agent of host {host} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /paddock/v1/monitoring/targets`: Prometheus' HTTP service discovery
/// of the agents, one target per Host, scraped through this server at
/// [`host`]'s path (the address is the one Prometheus asked).
pub async fn targets(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = monitoring_only(&req) {
        return e.into_response();
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let Some(res) = crate::resources::find(paddock_api::GROUP, paddock_api::VERSION, "hosts")
    else {
        return ApiError::Internal("no hosts".into()).into_response();
    };
    let opts = ListOptions {
        resource_version: Some("0".into()),
        ..ListOptions::default()
    };
    match state.api.list(res, None, &opts).await {
        Ok(page) => {
            let groups: Vec<Value> = page
                .items
                .iter()
                .map(|h| str_at(h, "/metadata/name"))
                .filter(|n| !n.is_empty())
                .map(|n| {
                    serde_json::json!({
                        "targets": [authority],
                        "labels": {"__metrics_path__": format!("/paddock/v1/hosts/{n}/metrics"), "host": n},
                    })
                })
                .collect();
            axum::Json(groups).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics`.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    if let Err(e) = monitoring_only(&req) {
        return e.into_response();
    }
    (
        [(http::header::CONTENT_TYPE, paddock_metrics::CONTENT_TYPE)],
        paddock_metrics::encode(Some(&state.fleet)),
    )
        .into_response()
}

/// What a request is, for its labels: (verb, resource), as authorization
/// names them; `nonresource` for paths outside the resource API.
fn labels(req: &Request) -> (String, String) {
    let path = req.uri().path();
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=1" || p == "watch=true"));
    match crate::route::parse(path) {
        Ok(t) => {
            let resource = match t.subresource() {
                Some(sub) => format!("{}/{sub}", t.res.plural),
                None => t.res.plural.to_owned(),
            };
            (t.verb(req.method(), watch).to_owned(), resource)
        }
        Err(_) => (
            req.method().as_str().to_lowercase(),
            "nonresource".to_owned(),
        ),
    }
}

/// Counts every request by verb, resource and code, and times those that
/// are not watches (a watch lasts as long as its client wants).
pub async fn record(req: Request, next: Next) -> Response {
    let (verb, resource) = labels(&req);
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &paddock_metrics::global().api;
    m.requests
        .get_or_create(&RequestLabels {
            verb: verb.clone(),
            resource: resource.clone(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    if verb != "watch" {
        m.duration
            .get_or_create(&RouteLabels { verb, resource })
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

/// A watch, counted in `paddock_apiserver_watches_open` while it lives.
pub struct OpenWatch(&'static str);

impl OpenWatch {
    pub fn new(resource: &'static str) -> Self {
        paddock_metrics::watches_open(resource, 1);
        Self(resource)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        paddock_metrics::watches_open(self.0, -1);
    }
}

/// A store whose writes are timed into `paddock_store_commit_duration_seconds`.
pub struct Metered(pub DynStore);

impl Metered {
    fn timed<T>(op: &str, started: Instant, r: &StoreResult<T>) {
        let labels = OpLabels { op: op.to_owned() };
        let m = &paddock_metrics::global().store;
        match r {
            Ok(_) => m
                .commit
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64()),
            // A precondition that does not hold is an answer, not a failure.
            Err(
                StoreError::AlreadyExists(_)
                | StoreError::NotFound(_)
                | StoreError::Conflict { .. }
                | StoreError::Fenced { .. },
            ) => {}
            Err(_) => {
                m.errors.get_or_create(&labels).inc();
            }
        }
    }
}

#[async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.0.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> StoreResult<Page> {
        self.0.list(prefix, start_after, limit, at).await
    }
    async fn count(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        at: Option<Revision>,
    ) -> StoreResult<usize> {
        self.0.count(prefix, start_after, at).await
    }
    async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> StoreResult<KeyValue> {
        let started = Instant::now();
        let r = self.0.put_fenced(key, value, pre, fence).await;
        Self::timed("put", started, &r);
        r
    }
    async fn delete_fenced(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> StoreResult<(KeyValue, Revision)> {
        let started = Instant::now();
        let r = self.0.delete_fenced(key, pre, fence).await;
        Self::timed("delete", started, &r);
        r
    }
    fn watch(&self, prefix: &str, after: Revision) -> StoreResult<Watch> {
        self.0.watch(prefix, after)
    }
    fn revision(&self) -> Revision {
        self.0.revision()
    }
    async fn current_revision(&self) -> StoreResult<Revision> {
        self.0.current_revision().await
    }
    async fn check(&self) -> StoreResult<()> {
        self.0.check().await
    }
}

fn quantity(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s
            .parse::<paddock_api::quantity::Memory>()
            .map(|m| i64::try_from(m.bytes()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        _ => 0,
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// Cluster CAs' expiry by PKI Secret (`namespace/name`), with the
/// resourceVersion it was read at: a certificate is parsed again only when
/// its Secret changed.
type CaExpiry = std::collections::HashMap<String, (String, i64)>;

/// The fleet as its objects say, from the watch cache when there is one.
async fn read_fleet(
    api: &Api,
    serving_cert: &str,
    ca_cert: &str,
    cas: &mut CaExpiry,
) -> Result<
    (
        Vec<HostState>,
        Vec<MachineState>,
        Vec<ClusterState>,
        Vec<CertificateExpiry>,
    ),
    ApiError,
> {
    let find = |g: &str, p: &str| {
        crate::resources::find(
            g,
            if g.is_empty() {
                "v1"
            } else {
                paddock_api::VERSION
            },
            p,
        )
        .ok_or_else(|| ApiError::Internal(format!("no resource {p}")))
    };
    let cached = ListOptions {
        resource_version: Some("0".into()),
        ..ListOptions::default()
    };
    let hosts = api
        .list(find(paddock_api::GROUP, "hosts")?, None, &cached)
        .await?;
    let machines = api
        .list(find(paddock_api::GROUP, "machines")?, None, &cached)
        .await?;
    let clusters = api
        .list(find(paddock_api::GROUP, "clusters")?, None, &cached)
        .await?;
    let mut vms: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for m in &machines.items {
        let h = str_at(m, "/spec/hostName");
        if !h.is_empty() {
            *vms.entry(h).or_default() += 1;
        }
    }
    let hosts = hosts
        .items
        .iter()
        .map(|h| {
            let name = str_at(h, "/metadata/name").to_owned();
            let st = &h["status"];
            HostState {
                vms: vms.get(name.as_str()).copied().unwrap_or(0),
                ready: str_at(h, "/status/phase") == "Ready",
                schedulable: !h["spec"]["unschedulable"].as_bool().unwrap_or(false),
                cpu_capacity: quantity(&st["capacity"]["cpu"]),
                cpu_allocatable: quantity(&st["allocatable"]["cpu"]),
                cpu_allocated: quantity(&st["allocated"]["cpu"]),
                memory_capacity: quantity(&st["capacity"]["memory"]),
                memory_allocatable: quantity(&st["allocatable"]["memory"]),
                memory_allocated: quantity(&st["allocated"]["memory"]),
                name,
            }
        })
        .collect();
    let machine_states = machines
        .items
        .iter()
        .map(|m| MachineState {
            namespace: str_at(m, "/metadata/namespace").to_owned(),
            cluster: str_at(m, "/spec/clusterName").to_owned(),
            name: str_at(m, "/metadata/name").to_owned(),
            phase: match str_at(m, "/status/phase") {
                "" => "Pending".to_owned(),
                p => p.to_owned(),
            },
        })
        .collect();
    let mut certificates = Vec::new();
    for (name, pem) in [("apiserver", serving_cert), ("ca", ca_cert)] {
        if let Some(t) = paddock_pki::not_after(pem) {
            certificates.push(CertificateExpiry {
                name: name.to_owned(),
                not_after: t,
            });
        }
    }
    let secrets = find("", "secrets")?;
    let mut cluster_states = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in &clusters.items {
        let (ns, name) = (
            str_at(c, "/metadata/namespace"),
            str_at(c, "/metadata/name"),
        );
        cluster_states.push(ClusterState {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            phase: if c.pointer("/metadata/deletionTimestamp").is_some() {
                "Deleting".to_owned()
            } else {
                match str_at(c, "/status/phase") {
                    "" => "Pending".to_owned(),
                    p => p.to_owned(),
                }
            },
        });
        // The cluster's CA, from its PKI Secret (made by the cluster controller).
        let Ok(s) = api.get_any(secrets, Some(ns), &format!("{name}-pki")).await else {
            continue;
        };
        let key = format!("{ns}/{name}");
        let rv = str_at(&s, "/metadata/resourceVersion").to_owned();
        let known = cas.get(&key).filter(|(at, _)| *at == rv).map(|(_, t)| *t);
        let not_after = known.or_else(|| {
            let pem = crate::system_secret::field(&s, "ca.crt")?;
            let t = paddock_pki::not_after(&pem)?;
            cas.insert(key.clone(), (rv, t));
            Some(t)
        });
        if let Some(t) = not_after {
            certificates.push(CertificateExpiry {
                name: format!("cluster/{key}"),
                not_after: t,
            });
        }
        seen.insert(key);
    }
    cas.retain(|k, _| seen.contains(k));
    Ok((hosts, machine_states, cluster_states, certificates))
}

/// Keeps `fleet` current: every [`FLEET_EVERY`], and whenever leadership changes.
pub async fn refresh_fleet(
    api: Api,
    fleet: Arc<Fleet>,
    leadership: crate::leader::Leadership,
    serving_cert: String,
    ca_cert: String,
) {
    let mut leader = leadership.subscribe();
    let mut cas = CaExpiry::new();
    loop {
        fleet.set_leader(leadership.current().is_some());
        match read_fleet(&api, &serving_cert, &ca_cert, &mut cas).await {
            Ok((h, m, c, certs)) => {
                fleet.update(&h, &m, &c, &certs, jiff::Timestamp::now().as_second());
            }
            Err(e) => tracing::warn!(error = %e, "reading the fleet for its metrics failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(FLEET_EVERY) => {}
            _ = leader.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: http::Method, uri: &str) -> Request {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .expect("request")
    }

    #[test]
    fn requests_are_labelled_as_authorization_names_them() {
        let l = |m, u| labels(&req(m, u));
        assert_eq!(
            l(
                http::Method::GET,
                "/apis/paddock.io/v1alpha1/namespaces/acme/clusters"
            ),
            ("list".into(), "clusters".into())
        );
        assert_eq!(
            l(
                http::Method::GET,
                "/apis/paddock.io/v1alpha1/clusters?watch=1"
            ),
            ("watch".into(), "clusters".into())
        );
        assert_eq!(
            l(
                http::Method::PATCH,
                "/apis/paddock.io/v1alpha1/namespaces/acme/machines/m1/status"
            ),
            ("patch".into(), "machines/status".into())
        );
        assert_eq!(
            l(
                http::Method::POST,
                "/apis/paddock.io/v1alpha1/namespaces/acme/clusters/web/kubeconfig"
            ),
            ("create".into(), "clusters/kubeconfig".into())
        );
        assert_eq!(
            l(http::Method::GET, "/version"),
            ("get".into(), "nonresource".into())
        );
        // Names are not labels: the series stay bounded.
        assert_eq!(
            l(http::Method::GET, "/api/v1/namespaces/acme/secrets/x"),
            ("get".into(), "secrets".into())
        );
    }
}
