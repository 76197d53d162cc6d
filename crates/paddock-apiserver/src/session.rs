//! Web console sessions: a bearer token signed in once, kept from the
//! page's scripts.
//!
//! `POST /console/session` takes a user's token, checks it as any request
//! would, and answers with a cookie `__Host-paddock-session` that is
//! `HttpOnly` (no script reads it), `Secure`, `SameSite=Strict` and bound to
//! this origin (the `__Host-` prefix forbids a `Domain`). The token itself
//! never reaches the page again. The session is a Secret in `paddock-system`
//! (so every server of the management plane knows it) holding hashes only:
//! of the session's secret and of the user's token, so that revoking the
//! token ends the session at once.
//!
//! A request that authenticates by the cookie must also carry the session's
//! CSRF token in `X-CSRF-Token`: a page of another origin can neither read
//! that token nor send a custom header without a CORS preflight, which this
//! server never grants. A `Sec-Fetch-Site: cross-site` request or an
//! `Origin` other than the request's own is refused before that.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{Api, DeleteOptions, ListOptions, WriteOptions};
use crate::auth::{User, generate_token, hash_token};
use crate::error::{ApiError, ApiResult};
use crate::resources;
use crate::selector::LabelSelector;

/// The session cookie's name.
pub const COOKIE: &str = "__Host-paddock-session";
/// The header that carries the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The type of session Secrets.
pub const SESSION_TYPE: &str = "paddock.io/console-session";
/// The label every session Secret carries.
pub const SESSION_LABEL: &str = "paddock.io/console-session";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

const NS: &str = paddock_api::host::SYSTEM_NAMESPACE;

fn secret_name(id: &str) -> String {
    format!("console-session-{id}")
}

fn secrets() -> ApiResult<&'static resources::Resource> {
    resources::find("", "v1", "secrets").ok_or_else(|| ApiError::Internal("no secrets".into()))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn data_field(secret: &Value, key: &str) -> Option<String> {
    let raw = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// A session cookie's value: `<id>.<secret>`. The id names the Secret; the
/// secret is what its hash is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CookieValue<'a> {
    id: &'a str,
    secret: &'a str,
}

impl<'a> CookieValue<'a> {
    fn parse(v: &'a str) -> Option<Self> {
        let (id, secret) = v.split_once('.')?;
        let hex = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id) && !secret.is_empty()).then_some(Self { id, secret })
    }
}

/// The session cookie among the request's cookies, if any.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
}

/// Whether the request carries a session cookie at all.
pub fn has_cookie(headers: &HeaderMap) -> bool {
    cookie_of(headers).is_some()
}

/// Why a request that came with the session cookie is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionRefused {
    #[error("a cross-site request may not use the console session")]
    CrossSite,
    #[error("the request's Origin {0:?} is not this server's")]
    Origin(String),
    #[error("the console session cookie is malformed")]
    Malformed,
    #[error("no such console session (signed out, or expired)")]
    Unknown,
    #[error("the console session expired; sign in again")]
    Expired,
    #[error("the token this session was signed in with is no longer valid")]
    Revoked,
    #[error("a request with the console session must carry its CSRF token in X-CSRF-Token")]
    Csrf,
}

/// Refuses what a page of another origin could have sent: `Sec-Fetch-Site:
/// cross-site`, or an `Origin` whose host is not the request's own (its
/// `Host` header in HTTP/1.1, its URI's authority in HTTP/2).
fn same_origin(headers: &HeaderMap, uri: &http::Uri) -> Result<(), SessionRefused> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if get("sec-fetch-site") == Some("cross-site") {
        return Err(SessionRefused::CrossSite);
    }
    if let Some(origin) = get("origin") {
        let host = uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| get("host"));
        let origin_host = origin.strip_prefix("https://");
        if origin_host.is_none() || origin_host != host {
            return Err(SessionRefused::Origin(origin.to_owned()));
        }
    }
    Ok(())
}

/// A session as stored.
struct Stored {
    user: User,
    csrf: String,
    expires: jiff::Timestamp,
}

/// Reads session `id` and checks its secret, expiry and token.
async fn load(state: &AppState, value: &str) -> Result<Stored, SessionRefused> {
    let c = CookieValue::parse(value).ok_or(SessionRefused::Malformed)?;
    let res = secrets().map_err(|_| SessionRefused::Unknown)?;
    let found = state
        .api
        .get_any(res, Some(NS), &secret_name(c.id))
        .await
        .map_err(|_| SessionRefused::Unknown)?;
    if found.get("type").and_then(Value::as_str) != Some(SESSION_TYPE)
        || data_field(&found, "sha256").as_deref() != Some(hash_token(c.secret).as_str())
    {
        return Err(SessionRefused::Unknown);
    }
    let expires = data_field(&found, "expires")
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        .ok_or(SessionRefused::Unknown)?;
    if expires <= jiff::Timestamp::now() {
        remove(&state.api, c.id).await;
        return Err(SessionRefused::Expired);
    }
    let user = data_field(&found, "token")
        .and_then(|h| state.auth.user_by_hash(&h))
        .ok_or(SessionRefused::Revoked)?;
    let csrf = data_field(&found, "csrf").ok_or(SessionRefused::Unknown)?;
    Ok(Stored {
        user,
        csrf,
        expires,
    })
}

/// The user of a request that authenticates by the session cookie, with
/// the origin and CSRF checks; `None` when it has no cookie.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Option<Result<User, SessionRefused>> {
    let value = cookie_of(headers)?;
    Some(
        async {
            same_origin(headers, uri)?;
            let s = load(state, &value).await?;
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .ok_or(SessionRefused::Csrf)?;
            // Compared as hashes: equal length, no early exit on a prefix.
            if hash_token(sent) != hash_token(&s.csrf) {
                return Err(SessionRefused::Csrf);
            }
            Ok(s.user)
        }
        .await,
    )
}

async fn remove(api: &Api, id: &str) {
    if let Ok(res) = secrets() {
        let _ = api
            .delete(res, Some(NS), &secret_name(id), &DeleteOptions::default())
            .await;
    }
}

/// Deletes sessions that expired (they are otherwise deleted only when
/// used again). Runs at each sign-in.
async fn sweep(api: &Api) {
    let Ok(res) = secrets() else { return };
    let Ok(labels) = LabelSelector::parse(SESSION_LABEL) else {
        return;
    };
    let opts = ListOptions {
        labels,
        ..ListOptions::default()
    };
    let Ok(page) = api.list(res, Some(NS), &opts).await else {
        return;
    };
    let now = jiff::Timestamp::now();
    for s in page.items {
        let expired = data_field(&s, "expires")
            .and_then(|e| e.parse::<jiff::Timestamp>().ok())
            .is_none_or(|t| t <= now);
        if let (true, Some(name)) = (expired, s.pointer("/metadata/name").and_then(Value::as_str)) {
            let _ = api
                .delete(res, Some(NS), name, &DeleteOptions::default())
                .await;
        }
    }
}

/// What the console learns of its session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub user: String,
    pub groups: Vec<String>,
    /// Sent back in `X-CSRF-Token` with every request.
    pub csrf_token: String,
    pub expires_at: String,
}

#[derive(Deserialize)]
pub struct SignIn {
    pub token: String,
}

fn set_cookie(value: &str, max_age: Duration) -> Option<HeaderValue> {
    let c = cookie::Cookie::build((COOKIE, value.to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(0),
        ))
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

fn refused(why: &SessionRefused) -> Response {
    tracing::warn!(reason = %why, "console session refused");
    ApiError::Unauthorized.into_response()
}

/// `POST /console/session`: signs in with a token (JSON `{"token": ...}`).
pub async fn sign_in(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(why) = same_origin(&headers, &uri) {
        return ApiError::Forbidden(why.to_string()).into_response();
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().map(str::trim) == Some("application/json"));
    if !json_body {
        return ApiError::UnsupportedMediaType(
            "sign in with Content-Type: application/json".into(),
        )
        .into_response();
    }
    let req: SignIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::BadRequest(format!("body: {e} (want {{\"token\": \"...\"}})"))
                .into_response();
        }
    };
    let token = req.token.trim();
    let Some(user) = state.auth.authenticate(Some(&format!("Bearer {token}"))) else {
        tracing::warn!("console sign-in with an unknown token refused");
        return ApiError::Unauthorized.into_response();
    };
    sweep(&state.api).await;
    match start(&state.api, &user, token).await {
        Ok((cookie_value, info)) => {
            tracing::info!(user = %user.name, "console session started");
            let mut resp = (StatusCode::CREATED, Json(info)).into_response();
            if let Some(h) = set_cookie(&cookie_value, SESSION_TTL) {
                resp.headers_mut().insert(header::SET_COOKIE, h);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Stores a new session for `user`, signed in with `token`.
async fn start(api: &Api, user: &User, token: &str) -> ApiResult<(String, SessionInfo)> {
    let id: [u8; 16] = rand::random();
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = generate_token();
    let csrf = generate_token();
    let expires = jiff::Timestamp::now()
        .checked_add(
            jiff::SignedDuration::try_from(SESSION_TTL)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .round(jiff::Unit::Second)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name(&id), "namespace": NS, "labels": {SESSION_LABEL: "true"}},
        "type": SESSION_TYPE,
        "data": {
            "sha256": b64(&hash_token(&secret)),
            "token": b64(&hash_token(token)),
            "csrf": b64(&csrf),
            "expires": b64(&expires.to_string()),
        },
    });
    api.create(secrets()?, Some(NS), obj, WriteOptions::default())
        .await?;
    Ok((
        format!("{id}.{secret}"),
        SessionInfo {
            user: user.name.clone(),
            groups: user.groups.clone(),
            csrf_token: csrf,
            expires_at: expires.to_string(),
        },
    ))
}

/// `GET /console/session`: who the cookie signs in, and the CSRF token the
/// page must send (readable only by a page of this origin).
pub async fn current(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(value) = cookie_of(&headers) else {
        return ApiError::Unauthorized.into_response();
    };
    if let Err(why) = same_origin(&headers, &uri) {
        return refused(&why);
    }
    match load(&state, &value).await {
        Ok(s) => Json(SessionInfo {
            user: s.user.name,
            groups: s.user.groups,
            csrf_token: s.csrf,
            expires_at: s.expires.to_string(),
        })
        .into_response(),
        Err(why) => refused(&why),
    }
}

/// `DELETE /console/session`: signs out (the session is deleted, the
/// cookie cleared). Needs the CSRF token like any other change.
pub async fn sign_out(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    match authenticate(&state, &headers, &uri).await {
        Some(Ok(user)) => {
            if let Some(c) = cookie_of(&headers).as_deref().and_then(CookieValue::parse) {
                remove(&state.api, c.id).await;
            }
            tracing::info!(user = %user.name, "console session ended");
            let mut resp = Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                .into_response();
            if let Some(h) = set_cookie("", Duration::ZERO) {
                resp.headers_mut().insert(header::SET_COOKIE, h);
            }
            resp
        }
        Some(Err(why)) => refused(&why),
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookie_values_need_an_id_and_a_secret() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            CookieValue::parse(&format!("{id}.s3cret")),
            Some(CookieValue {
                id,
                secret: "s3cret"
            })
        );
        assert_eq!(CookieValue::parse(&format!("{id}.")), None);
        assert_eq!(CookieValue::parse("short.s3cret"), None);
        assert_eq!(CookieValue::parse("../../etc/passwd.x"), None);
        assert_eq!(CookieValue::parse("nodot"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; __Host-paddock-session=abc.def; b=2")]);
        assert_eq!(cookie_of(&h).as_deref(), Some("abc.def"));
        assert!(cookie_of(&headers(&[("cookie", "a=1")])).is_none());
        assert!(cookie_of(&HeaderMap::new()).is_none());
    }

    #[test]
    fn other_origins_are_refused() {
        let path: http::Uri = "/api/v1/namespaces".parse().unwrap();
        let h2: http::Uri = "https://api.example:6443/api/v1/namespaces"
            .parse()
            .unwrap();
        assert_eq!(
            same_origin(&headers(&[("host", "api.example:6443")]), &path),
            Ok(())
        );
        let good = headers(&[
            ("host", "api.example:6443"),
            ("origin", "https://api.example:6443"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(same_origin(&good, &path), Ok(()));
        // HTTP/2 has no Host header: the authority is the URI's.
        let good = headers(&[("origin", "https://api.example:6443")]);
        assert_eq!(same_origin(&good, &h2), Ok(()));
        assert_eq!(
            same_origin(&headers(&[("sec-fetch-site", "cross-site")]), &path),
            Err(SessionRefused::CrossSite)
        );
        for origin in ["https://evil.example", "http://api.example:6443", "null"] {
            for uri in [&path, &h2] {
                assert_eq!(
                    same_origin(
                        &headers(&[("host", "api.example:6443"), ("origin", origin)]),
                        uri
                    ),
                    Err(SessionRefused::Origin(origin.into())),
                    "{origin}"
                );
            }
        }
    }

    #[test]
    fn the_cookie_is_host_only_http_only_secure_and_strict() {
        let c = set_cookie("id.secret", SESSION_TTL).unwrap();
        let c = c.to_str().unwrap();
        for part in [
            "__Host-paddock-session=id.secret",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=43200",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!c.contains("Domain"), "{c}");
    }
}
