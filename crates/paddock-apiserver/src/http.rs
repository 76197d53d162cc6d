//! The HTTP face of the resource verbs: request parsing, content types,
//! `Table` negotiation and watch streaming.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use paddock_store::Event;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::api::{Api, DeleteOptions, Deleted, ListOptions, Part, PatchKind, WriteOptions, decode};
use crate::auth::User;
use crate::authz::{self, Decision};
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
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1"))
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn write_options(p: &Params) -> ApiResult<WriteOptions> {
    let dry_run = match p.dry_run.as_deref() {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "dryRun {other:?} is not supported: use All"
            )));
        }
    };
    let strict = match p.field_validation.as_deref() {
        None | Some("" | "Ignore" | "Warn") => false,
        Some("Strict") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not supported: use Ignore, Warn or Strict"
            )));
        }
    };
    Ok(WriteOptions {
        dry_run,
        strict,
        admit: None,
    })
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
    })
}

fn body_json(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base == crate::protobuf::CONTENT_TYPE {
        return crate::protobuf::decode(body).map_err(ApiError::UnsupportedMediaType);
    }
    if !matches!(base, "application/json" | "" | "*/*")
        && PatchKind::from_content_type(ct).is_none()
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json (got {base})"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Every request under `/api/v1` and `/apis/{group}/{version}` lands here.
pub async fn resource(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<User>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(&state, &user, &method, &uri, &headers, &body).await {
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
) -> ApiResult<Response> {
    let api = &state.api;
    let target = route::parse(uri.path())?;
    let p: Params = Query::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
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
            ..write_options(p)?
        })
    };
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
    let table = wants_table(headers);
    let wrap = |obj: Value, code: StatusCode| {
        if table {
            json_response(code, &table::single(&res.columns, obj))
        } else {
            json_response(code, &obj)
        }
    };
    match (method, name.as_deref()) {
        (&Method::GET, Some(name)) => Ok(wrap(api.get(res, ns, name).await?, StatusCode::OK)),
        (&Method::GET, None) if truthy(&p.watch) => {
            watch(api.clone(), res, namespace, &p, table).await
        }
        (&Method::GET, None) => {
            let opts = list_options(res, &p)?;
            let page = api.list(res, ns, &opts).await?;
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(
                        &res.columns,
                        &page.items,
                        &page.resource_version,
                        page.continue_token.as_deref(),
                    ),
                ));
            }
            let mut meta = json!({"resourceVersion": page.resource_version});
            if let Some(c) = page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(r) = page.remaining {
                meta["remainingItemCount"] = json!(r);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": page.items}),
            ))
        }
        (&Method::POST, None) => {
            let obj = api
                .create(res, ns, body_json(headers, body)?, write_options(&p)?)
                .await?;
            Ok(wrap(obj, StatusCode::CREATED))
        }
        (&Method::PUT, Some(name)) => {
            let obj = api
                .update(
                    res,
                    ns,
                    name,
                    body_json(headers, body)?,
                    part,
                    write_options(&p)?,
                )
                .await?;
            Ok(wrap(obj, StatusCode::OK))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchKind::from_content_type(ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!(
                    "the patch content type {ct:?} is not supported: use application/merge-patch+json, \
                     application/json-patch+json or application/strategic-merge-patch+json"
                ))
            })?;
            let patch = body_json(headers, body)?;
            let obj = api
                .patch(res, ns, name, kind, &patch, part, write_options(&p)?)
                .await?;
            Ok(wrap(obj, StatusCode::OK))
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

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Streams watch events as newline-delimited JSON.
async fn watch(
    api: Api,
    res: &'static Resource,
    ns: Option<String>,
    p: &Params,
    table: bool,
) -> ApiResult<Response> {
    let opts = list_options(res, p)?;
    let timeout = match p.timeout_seconds.as_deref() {
        Some(t) if !t.is_empty() => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        _ => Duration::from_secs(1800),
    };
    let bookmarks = truthy(&p.allow_watch_bookmarks);
    let initial_end = truthy(&p.send_initial_events);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let render = move |obj: Value| -> Value {
        if table {
            table::single(&res.columns, obj)
        } else {
            obj
        }
    };
    let requested = p
        .resource_version
        .clone()
        .filter(|v| !v.is_empty() && v != "0");
    let (start, initial) = match requested {
        Some(rv) => (
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
            Vec::new(),
        ),
        None => {
            let page = api
                .list(
                    res,
                    ns.as_deref(),
                    &ListOptions {
                        labels: opts.labels.clone(),
                        fields: opts.fields.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            (page.resource_version.parse().unwrap_or(0), page.items)
        }
    };
    let prefix = res.prefix(ns.as_deref());
    let stream = api.store.watch(&prefix, start);
    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                let err: ApiError = e.into();
                send(event_line("ERROR", &err.status())).await;
                return;
            }
        };
        for obj in initial {
            if !send(event_line("ADDED", &render(obj))).await {
                return;
            }
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
        let mut tick = tokio::time::interval(api.bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if !send(bookmark(last, false)).await { return; }
                }
                ev = stream.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Err(e)) => {
                            let err: ApiError = e.into();
                            send(event_line("ERROR", &err.status())).await;
                            return;
                        }
                        Some(Ok(ev)) => ev,
                    };
                    last = ev.revision();
                    let Some((kind, obj)) = classify(&ev, &opts) else { continue };
                    if !send(event_line(kind, &render(obj))).await { return; }
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
