//! Limits on what a request may be, answered as Kubernetes answers them: a
//! `Status`, never a bare text or a reset connection. A body over the limit
//! is read to its end (up to a bound) before the 413 goes out, so that an
//! HTTP/1.1 client still writing its body reads the answer instead of a
//! broken pipe; over HTTP/2 the stream is answered and reset alone.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;

use crate::error::ApiError;

/// The largest request body, as kube-apiserver's (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// The longest request target (path and query).
pub const MAX_URL_BYTES: usize = 32 * 1024;
/// How much of an oversized body is read and dropped before the answer;
/// past this the connection is closed after it.
const MAX_DRAIN_BYTES: usize = 64 * 1024 * 1024;

fn too_large() -> Response {
    ApiError::TooLarge(format!(
        "the request body is too large: the limit is {MAX_BODY_BYTES} bytes"
    ))
    .into_response()
}

/// Refuses a URL or a body over its limit; passes the rest on with the
/// body read.
pub async fn enforce(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URL_BYTES {
        return ApiError::UriTooLong(format!(
            "the request URL is {target} bytes: the limit is {MAX_URL_BYTES}"
        ))
        .into_response();
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return too_large();
    }
    let (parts, mut body) = req.into_parts();
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return ApiError::BadRequest(format!("cannot read the request body: {e}"))
                    .into_response();
            }
        };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > MAX_DRAIN_BYTES {
                break;
            }
            if total <= MAX_BODY_BYTES {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > MAX_BODY_BYTES {
        return too_large();
    }
    next.run(Request::from_parts(parts, Body::from(buf.freeze())))
        .await
}
