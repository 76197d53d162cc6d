//! The agent's own small API, for the management plane: run a command in a
//! VM through its guest agent, read its serial console. Served over a unix
//! socket in the state directory (root only).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::net::UnixListener;

use crate::jsonsock;
use crate::reconcile::Reconciler;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"message": msg.into()}))).into_response()
}

async fn exec(
    State(r): State<Arc<Reconciler>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Json(req): Json<ExecRequest>,
) -> Response {
    let Some(vm) = r.vm_of(&ns, &name) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("machine {ns}/{name} does not run on this host"),
        );
    };
    if req.command.is_empty() {
        return err(StatusCode::BAD_REQUEST, "command: must not be empty");
    }
    let timeout = Duration::from_secs(req.timeout_seconds.unwrap_or(60).clamp(1, 3600));
    match jsonsock::guest_exec(&vm.qga(), &req.command, timeout).await {
        Ok(res) => Json(res).into_response(),
        Err(e) => err(
            StatusCode::BAD_GATEWAY,
            format!("guest agent of {ns}/{name}: {e}"),
        ),
    }
}

async fn console(
    State(r): State<Arc<Reconciler>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let Some(vm) = r.vm_of(&ns, &name) else {
        return err(
            StatusCode::NOT_FOUND,
            format!("machine {ns}/{name} does not run on this host"),
        );
    };
    match std::fs::read(vm.console()) {
        Ok(b) => {
            let tail = &b[b.len().saturating_sub(256 * 1024)..];
            (StatusCode::OK, String::from_utf8_lossy(tail).into_owned()).into_response()
        }
        Err(e) => err(StatusCode::NOT_FOUND, format!("no console log yet: {e}")),
    }
}

/// Serves the agent API on `path` until the task is dropped.
pub async fn serve(path: &Path, r: Arc<Reconciler>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let app = axum::Router::new()
        .route("/v1/machines/{ns}/{name}/exec", post(exec))
        .route("/v1/machines/{ns}/{name}/console", get(console))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, paddock_metrics::CONTENT_TYPE)],
                    paddock_metrics::encode(None),
                )
            }),
        )
        .with_state(r);
    axum::serve(listener, app).await
}
