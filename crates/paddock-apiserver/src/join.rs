//! Joining by netboot: a machine that boots Paddock's host image carries a
//! join token on its kernel command line, and exchanges it here, once, for
//! its host credential (what `paddock add-host` writes into a kubeconfig
//! for a hand-started agent).
//!
//! Both are kept as Secrets in `paddock-system`, hashed, so every server of
//! the management plane knows them (the token file is per server):
//! - `join-<host>` (type [`JOIN_TYPE`]): the SHA-256 of the join token's
//!   secret and when it expires. Issued when the machine's iPXE script is
//!   served; deleted by the exchange, under a precondition on its
//!   resourceVersion, so exactly one exchange succeeds.
//! - `host-credential-<host>` (type [`CREDENTIAL_TYPE`]): the SHA-256 of
//!   the host credential's secret. Deleting it revokes the credential.
//!
//! A token is `<host>.<secret>`: the host names the Secret to look in, the
//! secret (URL-safe base64, no dots) is what is hashed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{Api, DeleteOptions, Preconditions, WriteOptions};
use crate::auth::{User, generate_token, hash_token};
use crate::error::{ApiError, ApiResult};
use crate::resources;

pub const JOIN_TYPE: &str = "paddock.io/join-token";
pub const CREDENTIAL_TYPE: &str = "paddock.io/host-credential";
const NS: &str = paddock_api::host::SYSTEM_NAMESPACE;

pub fn join_secret(host: &str) -> String {
    format!("join-{host}")
}

pub fn credential_secret(host: &str) -> String {
    format!("host-credential-{host}")
}

/// Splits `<host>.<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let (host, secret) = token.rsplit_once('.')?;
    (!host.is_empty() && !secret.is_empty()).then_some((host, secret))
}

/// Writes Secret `name` of `kind` for `host` with `data`, replacing one
/// that is there.
async fn put(api: &Api, name: &str, kind: &str, host: &str, data: Value) -> ApiResult<()> {
    let res = crate::system_secret::resource()?;
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": {"paddock.io/host": host}},
        "type": kind,
        "data": data,
    });
    match api
        .create(res, Some(NS), obj.clone(), WriteOptions::default())
        .await
    {
        Err(ApiError::AlreadyExists(_)) => {
            api.update(
                res,
                Some(NS),
                name,
                obj,
                crate::api::Part::Main,
                WriteOptions::default(),
            )
            .await?;
            Ok(())
        }
        r => r.map(drop),
    }
}

/// Issues a join token for `host`, good for `ttl` and one exchange. A new
/// token replaces the host's earlier one.
pub async fn issue_join_token(api: &Api, host: &str, ttl: Duration) -> ApiResult<String> {
    let secret = generate_token();
    let expires = jiff::Timestamp::now()
        .checked_add(
            jiff::SignedDuration::try_from(ttl).map_err(|e| ApiError::Internal(e.to_string()))?,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .round(jiff::Unit::Second)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    put(
        api,
        &join_secret(host),
        JOIN_TYPE,
        host,
        json!({
            "sha256": crate::system_secret::encode(&hash_token(&secret)),
            "expires": crate::system_secret::encode(&expires.to_string()),
        }),
    )
    .await?;
    Ok(format!("{host}.{secret}"))
}

/// Why an exchange was refused (the caller is told, and the log says).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinRefused {
    #[error("not a join token")]
    Malformed,
    #[error("no join token is outstanding for host {0:?} (never issued, or already used)")]
    None(String),
    #[error("the join token of host {0:?} does not match")]
    Mismatch(String),
    #[error("the join token of host {0:?} expired at {1}")]
    Expired(String, String),
}

/// What an exchange gives the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Joined {
    pub host: String,
    /// The host credential: a bearer token for user `host:<host>`.
    pub token: String,
}

/// Exchanges a join token for its host's credential, once.
pub async fn exchange(api: &Api, token: &str) -> ApiResult<Result<Joined, JoinRefused>> {
    let Some((host, secret)) = split(token) else {
        return Ok(Err(JoinRefused::Malformed));
    };
    let res = crate::system_secret::resource()?;
    let found = match api.get(res, Some(NS), &join_secret(host)).await {
        Ok(v) => v,
        Err(ApiError::NotFound(_)) => return Ok(Err(JoinRefused::None(host.into()))),
        Err(e) => return Err(e),
    };
    if found.get("type").and_then(Value::as_str) != Some(JOIN_TYPE) {
        return Ok(Err(JoinRefused::None(host.into())));
    }
    if crate::system_secret::field(&found, "sha256").as_deref() != Some(hash_token(secret).as_str())
    {
        return Ok(Err(JoinRefused::Mismatch(host.into())));
    }
    let expires = crate::system_secret::field(&found, "expires").unwrap_or_default();
    let live = expires
        .parse::<jiff::Timestamp>()
        .is_ok_and(|t| t > jiff::Timestamp::now());
    if !live {
        return Ok(Err(JoinRefused::Expired(host.into(), expires)));
    }
    // Single use: of two exchanges of one token, one deletes this version.
    let rv = found
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let opts = DeleteOptions {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: rv,
        }),
        ..Default::default()
    };
    match api.delete(res, Some(NS), &join_secret(host), &opts).await {
        Ok(_) => {}
        Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => {
            return Ok(Err(JoinRefused::None(host.into())));
        }
        Err(e) => return Err(e),
    }
    let credential = generate_token();
    put(
        api,
        &credential_secret(host),
        CREDENTIAL_TYPE,
        host,
        json!({"sha256": crate::system_secret::encode(&hash_token(&credential))}),
    )
    .await?;
    tracing::info!(host, "join token exchanged for a host credential");
    record_joined(api, host).await;
    Ok(Ok(Joined {
        host: host.into(),
        token: format!("{host}.{credential}"),
    }))
}

/// Notes the join in the Host's `status.provisioning.joinedAt` (for the
/// BMC controller's state machine; a lost race only delays that).
async fn record_joined(api: &Api, host: &str) {
    let Some(res) = resources::find("paddock.io", "v1alpha1", "hosts") else {
        return;
    };
    for _ in 0..5 {
        let Ok(mut obj) = api.get(res, None, host).await else {
            return;
        };
        let now = crate::object::now_rfc3339();
        if let Some(o) = obj.as_object_mut() {
            let status = o.entry("status").or_insert_with(|| json!({}));
            if let Some(st) = status.as_object_mut() {
                let p = st.entry("provisioning").or_insert_with(|| json!({}));
                if let Some(p) = p.as_object_mut() {
                    p.insert("joinedAt".into(), json!(now));
                }
            }
        }
        match api
            .update(
                res,
                None,
                host,
                obj,
                crate::api::Part::Status,
                WriteOptions::default(),
            )
            .await
        {
            Err(ApiError::Conflict(..)) => continue,
            Err(e) => {
                tracing::warn!(host, error = %e, "cannot record the join on the Host");
                return;
            }
            Ok(_) => return,
        }
    }
}

/// The host agent a stored host credential `token` belongs to, if any.
pub async fn authenticate(api: &Api, token: &str) -> Option<User> {
    let (host, secret) = split(token)?;
    let res = crate::system_secret::resource().ok()?;
    let found = api
        .get_any(res, Some(NS), &credential_secret(host))
        .await
        .ok()?;
    if found.get("type").and_then(Value::as_str) != Some(CREDENTIAL_TYPE) {
        return None;
    }
    (crate::system_secret::field(&found, "sha256")? == hash_token(secret)).then(|| User {
        name: crate::authz::host_user(host),
        groups: vec![crate::authz::HOSTS_GROUP.to_owned()],
    })
}

#[derive(Deserialize)]
pub struct JoinRequest {
    pub token: String,
}

/// `POST /paddock/v1/join`, outside authentication: the join token is the
/// credential.
pub async fn handle(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::BadRequest(format!("body: {e} (want {{\"token\": \"...\"}})"))
                .into_response();
        }
    };
    match exchange(&state.api, &req.token).await {
        Ok(Ok(joined)) => Json(joined).into_response(),
        Ok(Err(refused)) => {
            tracing::warn!(reason = %refused, "join refused");
            ApiError::Forbidden(format!("join refused: {refused}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_at_the_last_dot() {
        assert_eq!(
            split("rack1.host-2.abc_-9"),
            Some(("rack1.host-2", "abc_-9"))
        );
        assert_eq!(split("nodot"), None);
        assert_eq!(split(".abc"), None);
        assert_eq!(split("host."), None);
    }
}
