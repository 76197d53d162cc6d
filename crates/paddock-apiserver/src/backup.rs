//! `GET /paddock/v1/backup` (administrators only): every object of the
//! store at one revision, streamed as [`paddock_store::backup`] writes it
//! (Secrets still sealed). `paddock admin backup FILE` fetches it;
//! `paddock admin restore FILE` writes it into an empty store of either
//! backend.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncReadExt;

use crate::AppState;
use crate::auth::User;
use crate::error::ApiError;

/// The keys a backup holds: every API object (not the leader's term).
pub const PREFIX: &str = "/registry/";

pub async fn get(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<User>,
) -> Response {
    if !user.is_admin() {
        return ApiError::Forbidden(format!(
            "User {:?} cannot take a backup: only administrators (system:masters) can",
            user.name
        ))
        .into_response();
    }
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let store = state.raw_store.clone();
    tokio::spawn(async move {
        match paddock_store::backup::write(&*store, PREFIX, writer).await {
            Ok(info) => tracing::info!(revision = info.revision, keys = info.keys, "backup taken"),
            // The client sees the stream end without its checksum: the
            // restore refuses such a file.
            Err(e) => tracing::error!(error = %crate::error::chain(&e), "backup failed"),
        }
    });
    let stream = futures::stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
