//! Machine subresources that only the host agent can answer (`exec`,
//! `console`): the request is authenticated here, then passed to the agent
//! of the Machine's host at the endpoint the agent reported.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::api::Api;
use crate::error::{ApiError, ApiResult};
use crate::resources;
use crate::route::AgentCall;

const TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn forward(
    api: &Api,
    ns: &str,
    name: &str,
    call: AgentCall,
    method: &Method,
    body: &Bytes,
) -> ApiResult<Response> {
    let want = match call {
        AgentCall::Exec => Method::POST,
        AgentCall::Console => Method::GET,
    };
    if *method != want {
        return Err(ApiError::MethodNotAllowed);
    }
    let machines = resources::find(paddock_api::GROUP, paddock_api::VERSION, "machines")
        .ok_or(ApiError::NoRoute)?;
    let m = api.get(machines, Some(ns), name).await?;
    let host = m
        .pointer("/spec/hostName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("machine {name} is not bound to a host yet"))
        })?;
    let (status, ct, bytes) = send(
        api,
        host,
        want,
        &format!("/v1/machines/{ns}/{name}/{}", call.path()),
        body,
        TIMEOUT,
    )
    .await?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(match status {
            StatusCode::NOT_FOUND => ApiError::NotFound(machines.subject(name)),
            StatusCode::BAD_REQUEST => ApiError::BadRequest(msg),
            _ => ApiError::Unavailable(msg),
        });
    }
    let mut r = (status, bytes).into_response();
    if let Some(ct) = ct {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(r)
}

/// Sends `method path` with `body` to the agent of `host`, at the endpoint
/// it reported; the answer's status, media type and body.
pub async fn send(
    api: &Api,
    host: &str,
    method: Method,
    path: &str,
    body: &Bytes,
    timeout: Duration,
) -> ApiResult<(StatusCode, Option<http::HeaderValue>, Bytes)> {
    let hosts = resources::find(paddock_api::GROUP, paddock_api::VERSION, "hosts")
        .ok_or(ApiError::NoRoute)?;
    let h = api.get(hosts, None, host).await?;
    let endpoint = h
        .pointer("/status/agentEndpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::Unavailable(format!("host {host} has not reported an agent endpoint"))
        })?;
    let socket = endpoint.strip_prefix("unix://").ok_or_else(|| {
        ApiError::Unavailable(format!(
            "host {host}: unsupported agent endpoint {endpoint}"
        ))
    })?;
    let unavailable =
        |e: &dyn std::fmt::Display| ApiError::Unavailable(format!("agent of host {host}: {e}"));
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unavailable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(&e))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "agent")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| unavailable(&"timed out"))?
        .map_err(|e| unavailable(&e))?;
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .map_err(|_| unavailable(&"timed out"))?
        .map_err(|e| unavailable(&e))?
        .to_bytes();
    Ok((status, ct, bytes))
}
