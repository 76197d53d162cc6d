//! The one API error type, and its rendering as a Kubernetes `Status`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use paddock_api::FieldError;
use serde_json::{Value, json};

/// Which resource an error is about (`clusters.paddock.io "demo"`).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub group: String,
    pub kind: String,
    /// Plural resource name, as `details.kind` expects.
    pub resource: String,
    pub name: String,
}

impl Subject {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} {:?} not found", .0.qualified(), .0.name)]
    NotFound(Subject),
    #[error("{} {:?} already exists", .0.qualified(), .0.name)]
    AlreadyExists(Subject),
    #[error("Operation cannot be fulfilled on {} {:?}: {}", .0.qualified(), .0.name, .1)]
    Conflict(Subject, String),
    /// A server-side apply would take fields other managers own:
    /// `(manager, field)` for each.
    #[error("{}", apply_conflicts(.1))]
    ApplyConflict(Subject, Vec<(String, String)>),
    #[error("{} {:?} is invalid: {}", .0.kind, .0.name, join(.1))]
    Invalid(Subject, Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Gone(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("only the following media types are accepted: {0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UriTooLong(String),
    /// Detail for the server's log only: clients see an id to quote.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    TooManyRequests(String),
}

/// Kubernetes' words for an apply's conflicts.
fn apply_conflicts(conflicts: &[(String, String)]) -> String {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(manager, field)| format!("conflict with {manager:?}: {field}"))
        .collect();
    match lines.len() {
        1 => format!("Apply failed with 1 conflict: {}", lines[0]),
        n => format!("Apply failed with {n} conflicts: {}", lines.join("\n")),
    }
}

fn join(errs: &[FieldError]) -> String {
    let parts: Vec<String> = errs.iter().map(ToString::to_string).collect();
    match parts.len() {
        1 => parts.concat(),
        _ => format!("[{}]", parts.join(", ")),
    }
}

impl From<paddock_store::StoreError> for ApiError {
    fn from(e: paddock_store::StoreError) -> Self {
        use paddock_store::StoreError as S;
        match e {
            S::Compacted { requested, oldest } => {
                ApiError::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            S::Fenced { .. } => ApiError::Unavailable(
                "this server is no longer the leader: the write of its controllers was refused (fenced by a newer term)"
                    .into(),
            ),
            S::FutureRevision { requested, current } => ApiError::BadRequest(format!(
                "resource version {requested} is newer than the server's {current}"
            )),
            other => ApiError::Internal(chain(&other)),
        }
    }
}

impl From<paddock_pki::PkiError> for ApiError {
    fn from(e: paddock_pki::PkiError) -> Self {
        ApiError::Internal(chain(&e))
    }
}

/// An error with its causes, on one line: `outer: inner: root`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::AlreadyExists(_) | Self::Conflict(..) | Self::ApplyConflict(..) => {
                StatusCode::CONFLICT
            }
            Self::Invalid(..) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Gone(_) => StatusCode::GONE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) | Self::NoRoute => "NotFound",
            Self::AlreadyExists(_) => "AlreadyExists",
            Self::Conflict(..) | Self::ApplyConflict(..) => "Conflict",
            Self::Invalid(..) => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::Gone(_) => "Expired",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::TooLarge(_) => "RequestEntityTooLarge",
            Self::NotAcceptable(_) => "NotAcceptable",
            Self::UriTooLong(_) => "RequestURITooLong",
            Self::Internal(_) => "InternalError",
            Self::Unavailable(_) => "ServiceUnavailable",
            Self::Timeout(_) => "Timeout",
            Self::TooManyRequests(_) => "TooManyRequests",
        }
    }

    /// The `Status` object Kubernetes clients expect.
    pub fn status(&self) -> Value {
        self.status_with_message(self.to_string())
    }

    fn status_with_message(&self, message: String) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let subject = match self {
            Self::NotFound(s)
            | Self::AlreadyExists(s)
            | Self::Conflict(s, _)
            | Self::ApplyConflict(s, _)
            | Self::Invalid(s, _) => Some(s),
            _ => None,
        };
        if let Some(s) = subject {
            let mut details = json!({"name": s.name, "group": s.group, "kind": s.resource});
            if let Self::Invalid(s, errs) = self {
                details["kind"] = json!(s.kind);
                details["causes"] = errs
                    .iter()
                    .map(|e| json!({"reason": e.kind.reason(), "message": e.detail(), "field": e.field}))
                    .collect();
            }
            if let Self::ApplyConflict(_, conflicts) = self {
                details["causes"] = conflicts
                    .iter()
                    .map(|(manager, field)| {
                        json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager:?}"), "field": field})
                    })
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            // The cause stays in the log; the client gets an id to quote.
            Self::Internal(detail) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let id = &id[..12];
                tracing::error!(error_id = id, error = %detail, "request failed");
                self.status_with_message(format!(
                    "internal error (id {id}): the server's log has the details"
                ))
            }
            Self::Forbidden(msg) => {
                tracing::warn!(reason = %msg, "request refused");
                self.status()
            }
            _ => self.status(),
        };
        let mut resp = (self.code(), axum::Json(status)).into_response();
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
