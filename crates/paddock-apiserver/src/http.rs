//! The HTTP face of the resource verbs: request parsing, content types,
//! `Table` negotiation and watch streaming.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use paddock_store::Event;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::{
    Api, Applied, DeleteOptions, Deleted, FieldValidation, ListOptions, Part, PatchKind, Warnings,
    WriteOptions, decode,
};
use crate::auth::User;
use crate::authz::{self, Decision};
use crate::cache::{CacheWatch, Entry, EventType, WatchEnd, entry::watch_line};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::route::{self, Call, Target};
use crate::selector::{FieldSelector, LabelSelector, labels_of};
use crate::table;

/// Query parameters of resource requests.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    limit: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    timeout_seconds: Option<String>,
    allow_watch_bookmarks: Option<String>,
    send_initial_events: Option<String>,
    dry_run: Option<String>,
    field_validation: Option<String>,
    propagation_policy: Option<String>,
    grace_period_seconds: Option<String>,
    field_manager: Option<String>,
    force: Option<String>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(
        v.as_deref(),
        Some("true" | "True" | "TRUE" | "t" | "T" | "1")
    )
}

/// Refuses boolean parameters that are not booleans (as Go's
/// `strconv.ParseBool` reads them), rather than reading them as false.
fn check_flags(p: &Params) -> ApiResult<()> {
    for (name, v) in [
        ("watch", &p.watch),
        ("allowWatchBookmarks", &p.allow_watch_bookmarks),
        ("sendInitialEvents", &p.send_initial_events),
        ("force", &p.force),
    ] {
        if let Some(v) = v.as_deref()
            && !matches!(
                v,
                "" | "true"
                    | "True"
                    | "TRUE"
                    | "t"
                    | "T"
                    | "1"
                    | "false"
                    | "False"
                    | "FALSE"
                    | "f"
                    | "F"
                    | "0"
            )
        {
            return Err(ApiError::BadRequest(format!(
                "{name} {v:?} is not a boolean: use true or false"
            )));
        }
    }
    Ok(())
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Media types responses come in (JSON; protobuf and YAML clients accept
/// JSON as well, as kubectl does).
const SERVED_TYPES: &str = "application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";

/// Refuses an `Accept` header that admits no JSON (406), as Kubernetes
/// refuses media types it cannot serve.
fn check_accept(headers: &HeaderMap) -> ApiResult<()> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or("");
    let ok = accept.trim().is_empty()
        || accept.split(',').any(|range| {
            let base = range.split(';').next().unwrap_or("").trim();
            matches!(base, "*/*" | "application/*" | "application/json")
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(SERVED_TYPES.into()))
    }
}

/// The form a response takes, from the `Accept` header: the objects, a
/// `Table` of them (kubectl get), or their metadata alone
/// (`PartialObjectMetadata`, what metadata-only informers ask for). The
/// first media type that names one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    Object,
    Table,
    Metadata,
}

impl Form {
    fn of(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for range in accept.split(',') {
            let mut params = range.split(';');
            let base = params.next().unwrap_or("").trim();
            if !matches!(base, "application/json" | "*/*" | "application/*") {
                continue;
            }
            let mut as_ = None;
            let mut group = None;
            for p in params {
                match p.trim().split_once('=') {
                    Some(("as", v)) => as_ = Some(v.trim()),
                    Some(("g", v)) => group = Some(v.trim()),
                    _ => {}
                }
            }
            match (as_, group) {
                (None, _) => return Self::Object,
                (Some("Table"), Some("meta.k8s.io")) => return Self::Table,
                (
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                    Some("meta.k8s.io"),
                ) => {
                    return Self::Metadata;
                }
                // A form not served: the next media type may be one.
                _ => {}
            }
        }
        Self::Object
    }

    /// One object in this form.
    fn object(self, res: &Resource, obj: Value) -> Value {
        match self {
            Self::Object => obj,
            Self::Table => table::single(&res.columns, obj),
            Self::Metadata => partial(obj),
        }
    }

    /// A watch line for one object in this form: `json` is the object as
    /// served, shared by every watcher that wants the whole object.
    fn line(self, res: &Resource, kind: &str, json: &[u8]) -> Option<Bytes> {
        match self {
            Self::Object => Some(watch_line(kind, json)),
            form => serde_json::from_slice::<Value>(json)
                .ok()
                .map(|o| event_line(kind, &form.object(res, o))),
        }
    }
}

/// An object's metadata alone, as a `PartialObjectMetadata`.
fn partial(mut obj: Value) -> Value {
    table::partial(
        obj.get_mut("metadata")
            .map_or_else(|| json!({}), Value::take),
    )
}

/// The longest `fieldManager` Kubernetes accepts.
const MAX_MANAGER_LEN: usize = 128;

fn write_options(p: &Params, headers: &HeaderMap) -> ApiResult<WriteOptions> {
    let dry_run = match p.dry_run.as_deref() {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "dryRun {other:?} is not supported: use All"
            )));
        }
    };
    let validation = match p.field_validation.as_deref() {
        None | Some("" | "Warn") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some("Strict") => FieldValidation::Strict,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not supported: use Ignore, Warn or Strict"
            )));
        }
    };
    let manager = match p.field_manager.as_deref() {
        Some(m) if m.len() > MAX_MANAGER_LEN => {
            return Err(ApiError::BadRequest(format!(
                "fieldManager: Too long: may not be longer than {MAX_MANAGER_LEN} characters"
            )));
        }
        Some(m) if m.chars().any(|c| c.is_control()) => {
            return Err(ApiError::BadRequest(
                "fieldManager: Invalid value: must not contain control characters".into(),
            ));
        }
        Some(m) if !m.is_empty() => Some(m.to_owned()),
        _ => manager_from_user_agent(headers),
    };
    Ok(WriteOptions {
        dry_run,
        validation,
        admit: None,
        manager,
        force: truthy(&p.force),
        warnings: Warnings::default(),
    })
}

/// The manager of a write that names none: the user agent up to its first
/// `/` (`kubectl/v1.35 (linux/amd64)` writes as `kubectl`), as Kubernetes
/// does.
fn manager_from_user_agent(headers: &HeaderMap) -> Option<String> {
    let ua = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let prefix: String = ua
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MANAGER_LEN)
        .collect();
    (!prefix.is_empty()).then_some(prefix)
}

/// A response with the write's warnings as `Warning` headers (RFC 7234
/// code 299), which kubectl and client-go print.
fn with_warnings(mut r: Response, warnings: &Warnings) -> Response {
    for w in warnings.take() {
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        let text = format!("299 - \"{quoted}\"");
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

fn list_options(res: &Resource, p: &Params) -> ApiResult<ListOptions> {
    let labels = LabelSelector::parse(p.label_selector.as_deref().unwrap_or(""))
        .map_err(ApiError::BadRequest)?;
    let fields = FieldSelector::parse(p.field_selector.as_deref().unwrap_or(""), res.field_labels)
        .map_err(ApiError::BadRequest)?;
    let limit = match p.limit.as_deref() {
        None | Some("" | "0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        ),
    };
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: p.continue_token.clone().filter(|c| !c.is_empty()),
        resource_version: p.resource_version.clone(),
        resource_version_match: p.resource_version_match.clone(),
    })
}

/// Media types a request body may have besides JSON and protobuf.
const YAML_TYPES: [&str; 3] = [
    "application/yaml",
    "application/apply-patch+yaml",
    "text/yaml",
];

pub(crate) fn body_json(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base == crate::protobuf::CONTENT_TYPE {
        return crate::protobuf::decode(body).map_err(ApiError::UnsupportedMediaType);
    }
    if YAML_TYPES.contains(&base) {
        return yaml_body(body);
    }
    if !matches!(base, "application/json" | "" | "*/*")
        && PatchKind::from_content_type(ct).is_none()
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml, application/vnd.kubernetes.protobuf (got {base})"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Duplicate fields of a JSON body, as `fieldValidation` says: each named
/// in a warning (the last one counts, as in Kubernetes), refused, or let be.
fn check_duplicates(body: &Bytes, opts: &WriteOptions) -> ApiResult<()> {
    if opts.validation == FieldValidation::Ignore {
        return Ok(());
    }
    let list: Vec<String> = crate::duplicates::find(body)
        .iter()
        .map(|f| format!("duplicate field \"{f}\""))
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    if opts.validation == FieldValidation::Strict {
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    for w in list {
        opts.warnings.push(w);
    }
    Ok(())
}

/// A YAML body as JSON (one document; JSON is YAML too).
fn yaml_body(body: &Bytes) -> ApiResult<Value> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not UTF-8: {e}")))?;
    let v: Value = serde_saphyr::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be one object (a YAML mapping)".into(),
        ));
    }
    Ok(v)
}

/// Every request under `/api/v1` and `/apis/{group}/{version}` lands here.
pub async fn resource(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<User>,
    cookie: Option<axum::Extension<crate::session::ByCookie>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A console session's watches are opened again, and the session
    // checked again, at least this often.
    let watch_limit = cookie.map(|_| state.console_watch_limit);
    match serve(&state, &user, &method, &uri, &headers, &body, watch_limit).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    state: &AppState,
    user: &User,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    watch_limit: Option<Duration>,
) -> ApiResult<Response> {
    // The leader's loops write within its term, and only while it leads.
    let fenced;
    let api = if user.name == crate::loopback::CONTROLLERS {
        let term = state.leadership.current().ok_or_else(|| {
            ApiError::Unavailable(
                "this server is not the leader: its controllers may not write".into(),
            )
        })?;
        fenced = state.api.fenced(term.fence);
        &fenced
    } else {
        &state.api
    };
    let target = route::parse(uri.path())?;
    // A machine's console log and exec are the agent's answers, in their
    // own media types; everything else is JSON.
    if !matches!(target.call, Some(Call::Agent(_))) {
        check_accept(headers)?;
    }
    let p: Params = Query::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    check_flags(&p)?;
    let watching = truthy(&p.watch);
    // Conditions on reads are looked up now; those on writes are decided on
    // the object as it would be stored.
    let mut admit: Option<crate::api::Admit> = None;
    if let Decision::AllowIf(cond) = authz::check(user, &target, method, watching)? {
        let refusal = authz::forbidden(user, &target, method, watching, Some(&cond)).to_string();
        if cond.is_lookup() {
            if !authz::holds(api, &cond).await? {
                return Err(ApiError::Forbidden(refusal));
            }
        } else if !matches!(*method, Method::POST | Method::PUT | Method::PATCH)
            || target.call.is_some()
        {
            // Only writes through the object path check the result.
            return Err(ApiError::Forbidden(refusal));
        } else {
            admit = Some(std::sync::Arc::new(move |old, new| {
                if authz::admits(&cond, old, new) {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(refusal.clone()))
                }
            }));
        }
    }
    let write_options = |p: &Params| -> ApiResult<WriteOptions> {
        Ok(WriteOptions {
            admit: admit.clone(),
            ..write_options(p, headers)?
        })
    };
    if p.force.is_some()
        && !(*method == Method::PATCH
            && PatchKind::from_content_type(content_type(headers)) == Some(PatchKind::Apply))
    {
        return Err(ApiError::BadRequest(
            "force: Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    let Target {
        res,
        namespace,
        name,
        status,
        call,
    } = target;
    match (call, namespace.as_deref(), name.as_deref()) {
        (Some(Call::Agent(call)), Some(ns), Some(name)) => {
            return crate::agent_proxy::forward(api, ns, name, call, method, body).await;
        }
        (Some(Call::Binding), Some(ns), Some(name)) => {
            if *method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            let host = crate::binding::target(&body_json(headers, body)?)?;
            let out = crate::binding::bind(api, ns, name, &host).await?;
            return Ok(json_response(StatusCode::CREATED, &out));
        }
        (Some(Call::Kubeconfig), Some(ns), Some(name)) => {
            if *method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            let out = crate::kubeconfig::issue(api, &state.clusters, user, ns, name, body).await?;
            return Ok(json_response(StatusCode::CREATED, &out));
        }
        _ => {}
    }
    let ns = namespace.as_deref();
    let part = if status { Part::Status } else { Part::Main };
    let form = Form::of(headers);
    let wrap = |obj: Value, code: StatusCode| json_response(code, &form.object(res, obj));
    match (method, name.as_deref()) {
        (&Method::GET, Some(name)) => {
            let obj = match p.resource_version.as_deref() {
                Some("0") => api.get_any(res, ns, name).await?,
                _ => api.get(res, ns, name).await?,
            };
            Ok(wrap(obj, StatusCode::OK))
        }
        (&Method::GET, None) if truthy(&p.watch) => {
            watch(api.clone(), res, namespace, &p, form, watch_limit).await
        }
        (&Method::GET, None) => {
            let opts = list_options(res, &p)?;
            let page = api.list_entries(res, ns, &opts).await?;
            if form == Form::Table {
                let items = page
                    .items
                    .iter()
                    .map(|e| e.object())
                    .collect::<ApiResult<Vec<_>>>()?;
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(
                        &res.columns,
                        &items,
                        &page.resource_version,
                        page.continue_token.as_deref(),
                    ),
                ));
            }
            let mut meta = json!({"resourceVersion": page.resource_version});
            if let Some(c) = page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(n) = page.remaining {
                meta["remainingItemCount"] = json!(n);
            }
            if form == Form::Metadata {
                let items = page
                    .items
                    .iter()
                    .map(|e| e.object().map(partial))
                    .collect::<ApiResult<Vec<_>>>()?;
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                            "metadata": meta, "items": items}),
                ));
            }
            Ok(list_response(res, &meta, &page.items))
        }
        (&Method::POST, None) => {
            let opts = write_options(&p)?;
            check_duplicates(body, &opts)?;
            let warnings = opts.warnings.clone();
            let obj = api.create(res, ns, body_json(headers, body)?, opts).await?;
            Ok(with_warnings(wrap(obj, StatusCode::CREATED), &warnings))
        }
        (&Method::PUT, Some(name)) => {
            let opts = write_options(&p)?;
            check_duplicates(body, &opts)?;
            let warnings = opts.warnings.clone();
            let obj = api
                .update(res, ns, name, body_json(headers, body)?, part, opts)
                .await?;
            Ok(with_warnings(wrap(obj, StatusCode::OK), &warnings))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = content_type(headers);
            let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!(
                    "the patch content type {ct:?} is not supported: use application/merge-patch+json, \
                     application/json-patch+json, application/strategic-merge-patch+json or \
                     application/apply-patch+yaml"
                ))
            })?;
            let patch = body_json(headers, body)?;
            let opts = write_options(&p)?;
            check_duplicates(body, &opts)?;
            let warnings = opts.warnings.clone();
            let (obj, code) = if kind == PatchKind::Apply {
                match api.apply(res, ns, name, patch, part, opts).await? {
                    Applied::Created(o) => (o, StatusCode::CREATED),
                    Applied::Updated(o) => (o, StatusCode::OK),
                }
            } else {
                (
                    api.patch(res, ns, name, kind, &patch, part, opts).await?,
                    StatusCode::OK,
                )
            };
            Ok(with_warnings(wrap(obj, code), &warnings))
        }
        (&Method::DELETE, name) => {
            if status {
                return Err(ApiError::MethodNotAllowed);
            }
            let mut opts: DeleteOptions = if body.is_empty() {
                DeleteOptions::default()
            } else {
                serde_json::from_slice(body)
                    .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
            };
            if p.propagation_policy.is_some() {
                opts.propagation_policy.clone_from(&p.propagation_policy);
            }
            if let Some(g) = p.grace_period_seconds.as_deref() {
                let secs = g.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "gracePeriodSeconds {g:?} is not a whole number of seconds"
                    ))
                })?;
                opts.grace_period_seconds = Some(secs);
            }
            if p.dry_run.as_deref() == Some("All") {
                opts.dry_run = vec!["All".into()];
            } else {
                write_options(&p)?;
            }
            match name {
                Some(name) => match api.delete(res, ns, name, &opts).await? {
                    Deleted::Pending(obj) => Ok(wrap(obj, StatusCode::OK)),
                    Deleted::Gone(obj) => Ok(json_response(
                        StatusCode::OK,
                        &json!({
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                            "details": {"name": name, "group": res.group, "kind": res.plural,
                                        "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)}
                        }),
                    )),
                },
                None => {
                    let list = list_options(res, &p)?;
                    api.delete_collection(res, ns, &list, &opts).await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    ))
                }
            }
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// A `…List` whose items are the cached JSON, joined as they are.
fn list_response(res: &Resource, meta: &Value, items: &[std::sync::Arc<Entry>]) -> Response {
    let head = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta});
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    // Replace the closing brace with the items.
    body.pop();
    let size: usize = items.iter().map(|e| e.json.len() + 1).sum();
    body.reserve(size + 12);
    body.extend_from_slice(b",\"items\":[");
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Where a watch's changes come from: the watch cache, or the store's
/// history for revisions older than the cache keeps.
enum Feed {
    Cache(CacheWatch, std::sync::Arc<crate::cache::WatchCache>),
    Store(paddock_store::Watch),
    /// The store could not start the watch: streamed as an ERROR event,
    /// as Kubernetes does (clients relist on a 410 there).
    Refused(Option<Value>),
}

/// One step of a feed.
enum Step {
    /// A change at a revision, and its line if this watcher wants it.
    Change(u64, Option<Bytes>),
    /// The feed ended with this `Status`.
    Failed(Value),
    End,
}

impl Feed {
    async fn next(&mut self, res: &Resource, opts: &ListOptions, form: Form) -> Step {
        match self {
            Feed::Cache(w, _) => match w.next().await {
                Ok(Some(c)) => {
                    let line = c
                        .classify(res, &opts.labels, &opts.fields)
                        .and_then(|t| match form {
                            Form::Object => Some(c.line(t)),
                            form => form.line(res, t.as_str(), &c.object.json),
                        });
                    Step::Change(c.revision, line)
                }
                Ok(None) => Step::End,
                Err(WatchEnd::TooSlow(n)) => Step::Failed(
                    ApiError::TooManyRequests(format!(
                        "the watcher left {n} changes unread and was closed: watch again from the last resourceVersion it saw"
                    ))
                    .status(),
                ),
                Err(WatchEnd::Reset) => Step::Failed(
                    ApiError::Unavailable(
                        "the watch cache is reading the store again: watch again from the last resourceVersion seen"
                            .into(),
                    )
                    .status(),
                ),
            },
            Feed::Refused(status) => status.take().map_or(Step::End, Step::Failed),
            Feed::Store(w) => match w.next().await {
                None => Step::End,
                Some(Err(e)) => Step::Failed(ApiError::from(e).status()),
                Some(Ok(ev)) => {
                    let line = classify(&ev, opts)
                        .map(|(kind, obj)| event_line(kind, &form.object(res, obj)));
                    Step::Change(ev.revision(), line)
                }
            },
        }
    }

    /// A revision this watcher has seen everything up to, for bookmarks.
    fn progress(&self, last: u64) -> u64 {
        match self {
            // Every change up to the cache's revision is in the queue
            // already: once the queue is empty, the watcher has seen them.
            Feed::Cache(w, cache) => {
                let r = cache.revision();
                if w.idle() { last.max(r) } else { last }
            }
            Feed::Store(_) | Feed::Refused(_) => last,
        }
    }
}

/// A watch writes the changes waiting for it in writes of up to this many bytes.
const WATCH_BATCH_BYTES: usize = 64 * 1024;

/// A busy watch is written to at most once per this long (see [`watch`]).
const WATCH_FLUSH: Duration = Duration::from_millis(5);

/// Streams watch events as newline-delimited JSON.
async fn watch(
    api: Api,
    res: &'static Resource,
    ns: Option<String>,
    p: &Params,
    form: Form,
    limit: Option<Duration>,
) -> ApiResult<Response> {
    let opts = list_options(res, p)?;
    let timeout = match p.timeout_seconds.as_deref() {
        Some(t) if !t.is_empty() => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        _ => Duration::from_secs(1800),
    };
    let timeout = limit.map_or(timeout, |l| timeout.min(l));
    let bookmarks = truthy(&p.allow_watch_bookmarks);
    let initial_end = truthy(&p.send_initial_events);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let requested = match p.resource_version.as_deref() {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let prefix = res.prefix(ns.as_deref());
    let mut from_cache = None;
    if let Some(cache) = &api.cache {
        // A watch from now without a resourceVersion starts no older than the store.
        if requested.is_none() && p.resource_version.as_deref() != Some("0") {
            cache
                .wait_for(api.store.current_revision().await.map_err(ApiError::from)?)
                .await;
        }
        if let Some(w) = cache.watch(res, &prefix, requested) {
            from_cache = Some((w, cache.clone()));
        }
    }
    // The objects a watch from now starts with, as ADDED lines.
    let added = |items: &[std::sync::Arc<Entry>]| -> Vec<Bytes> {
        items
            .iter()
            .filter_map(|e| form.line(res, EventType::Added.as_str(), &e.json))
            .collect()
    };
    let (start, initial, mut feed) = match from_cache {
        Some((mut w, cache)) => {
            let initial = match w.initial.take() {
                Some(objects) => added(
                    &objects
                        .select(&prefix, None, &opts.labels, &opts.fields, None)
                        .0,
                ),
                None => Vec::new(),
            };
            (w.start, initial, Feed::Cache(w, cache))
        }
        None => {
            let (start, initial) = match requested {
                Some(rv) => (rv, Vec::new()),
                None => {
                    let page = api
                        .list_entries(
                            res,
                            ns.as_deref(),
                            &ListOptions {
                                labels: opts.labels.clone(),
                                fields: opts.fields.clone(),
                                ..Default::default()
                            },
                        )
                        .await?;
                    (
                        page.resource_version.parse().unwrap_or(0),
                        added(&page.items),
                    )
                }
            };
            let feed = match api.store.watch(&prefix, start) {
                Ok(w) => Feed::Store(w),
                Err(e) => Feed::Refused(Some(ApiError::from(e).status())),
            };
            (start, initial, feed)
        }
    };
    let bookmark_every = api.bookmark_every;
    tokio::spawn(async move {
        let _open = crate::metrics::OpenWatch::new(res.plural);
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        // The initial ADDED lines, in writes of up to WATCH_BATCH_BYTES.
        let mut batch = bytes::BytesMut::new();
        for line in initial {
            batch.extend_from_slice(&line);
            if batch.len() >= WATCH_BATCH_BYTES && !send(batch.split().freeze()).await {
                return;
            }
        }
        if !batch.is_empty() && !send(batch.freeze()).await {
            return;
        }
        let mut last = start;
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta}),
            )
        };
        if initial_end && !send(bookmark(last, true)).await {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let now = tokio::time::Instant::now();
        let mut sent_at = now.checked_sub(WATCH_FLUSH).unwrap_or(now);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    last = feed.progress(last);
                    if !send(bookmark(last, false)).await { return; }
                }
                step = feed.next(res, &opts, form) => match step {
                    Step::End => return,
                    Step::Failed(status) => {
                        send(event_line("ERROR", &status)).await;
                        return;
                    }
                    Step::Change(rev, line) => {
                        last = rev;
                        // Lines that are already waiting go out in one
                        // write: a watcher that fell behind catches up in
                        // few frames, TLS records and syscalls, not one of
                        // each per change. A busy watch (written to less
                        // than WATCH_FLUSH ago) also gathers what arrives
                        // until WATCH_FLUSH after its last write: a steady
                        // stream goes out in one write per WATCH_FLUSH,
                        // while a change after a quiet spell goes at once.
                        let gather_until = sent_at + WATCH_FLUSH;
                        let mut batch = bytes::BytesMut::new();
                        batch.extend_from_slice(line.as_deref().unwrap_or_default());
                        let mut then = None;
                        while batch.len() < WATCH_BATCH_BYTES {
                            let step = match feed.next(res, &opts, form).now_or_never() {
                                Some(step) => Some(step),
                                None if tokio::time::Instant::now() < gather_until => {
                                    tokio::time::timeout_at(gather_until, feed.next(res, &opts, form))
                                        .await
                                        .ok()
                                }
                                None => None,
                            };
                            match step {
                                Some(Step::Change(rev, line)) => {
                                    last = rev;
                                    batch.extend_from_slice(line.as_deref().unwrap_or_default());
                                }
                                Some(end) => {
                                    then = Some(end);
                                    break;
                                }
                                None => break,
                            }
                        }
                        if !batch.is_empty() && !send(batch.freeze()).await {
                            return;
                        }
                        sent_at = tokio::time::Instant::now();
                        match then {
                            Some(Step::Failed(status)) => {
                                send(event_line("ERROR", &status)).await;
                                return;
                            }
                            Some(Step::End) => return,
                            _ => {}
                        }
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| ApiError::Internal("response".into()).into_response()))
}

/// The watch event type a change is for this watcher, given its selectors.
fn classify(ev: &Event, opts: &ListOptions) -> Option<(&'static str, Value)> {
    let matches = |o: &Value| opts.labels.matches(&labels_of(o)) && opts.fields.matches(o);
    match ev {
        Event::Put { kv, prev } => {
            let new = decode(kv).ok()?;
            let was = prev
                .as_ref()
                .and_then(|p| decode(p).ok())
                .is_some_and(|o| matches(&o));
            match (matches(&new), was, prev.is_some()) {
                (true, true, _) => Some(("MODIFIED", new)),
                (true, false, _) => Some(("ADDED", new)),
                (false, true, _) => Some(("DELETED", new)),
                (false, false, _) => None,
            }
        }
        Event::Delete { prev, revision } => {
            let mut obj = decode(prev).ok()?;
            if !matches(&obj) {
                return None;
            }
            crate::object::meta_mut(&mut obj)
                .insert("resourceVersion".into(), json!(revision.to_string()));
            Some(("DELETED", obj))
        }
    }
}
