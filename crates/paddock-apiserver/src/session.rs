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
//! CSRF token in `X-CSRF-Token`. The token is given once, in the sign-in's
//! answer, and the page keeps it in its origin's storage. So a page of
//! another origin can neither read it nor send a custom header without a
//! CORS preflight, which this server never grants. The cookie alone, even
//! in the hands of a server on another port of the same host (cookies do
//! not tell ports apart; the gateway's ingress ports are such servers),
//! authenticates nothing. A `Sec-Fetch-Site` other than `same-origin` or
//! `none`, or an `Origin` other than the request's own, is refused before
//! that.
//!
//! A token holds at most [`SESSIONS_PER_TOKEN`] sessions: signing in again
//! ends its oldest. Expired sessions are deleted when used and by
//! [`sweep_every`].

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{Api, DeleteOptions, ListOptions, WriteOptions};
use crate::auth::{User, generate_token, hash_token};
use crate::error::{ApiError, ApiResult};
use crate::selector::LabelSelector;

/// The session cookie's name.
pub const COOKIE: &str = "__Host-paddock-session";
/// The header that carries the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a watch authenticated by the session cookie may last before
/// the page opens it again (and the session is checked again): signing
/// out, or revoking the token, ends what the page sees within this time.
pub const WATCH_LIMIT: Duration = Duration::from_secs(300);

/// Marks a request authenticated by the session cookie.
#[derive(Debug, Clone, Copy)]
pub struct ByCookie;

/// The type of session Secrets.
pub const SESSION_TYPE: &str = "paddock.io/console-session";
/// The label every session Secret carries.
pub const SESSION_LABEL: &str = "paddock.io/console-session";
/// The label holding the first 16 hex digits of the session's token's hash.
pub const TOKEN_LABEL: &str = "paddock.io/console-token";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions one token holds at once.
pub const SESSIONS_PER_TOKEN: usize = 10;

const NS: &str = paddock_api::host::SYSTEM_NAMESPACE;

fn secret_name(id: &str) -> String {
    format!("console-session-{id}")
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
    #[error("the session cannot be read: {0}")]
    Unavailable(String),
}

/// Refuses what a page of another origin could have sent: `Sec-Fetch-Site:
/// cross-site`, or an `Origin` whose host is not the request's own (its
/// `Host` header in HTTP/1.1, its URI's authority in HTTP/2).
fn same_origin(headers: &HeaderMap, uri: &http::Uri) -> Result<(), SessionRefused> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    // `same-site` too: another port of this host is the same site.
    if get("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
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
    let res =
        crate::system_secret::resource().map_err(|e| SessionRefused::Unavailable(e.to_string()))?;
    let name = secret_name(c.id);
    let found = match state.api.get_any(res, Some(NS), &name).await {
        Ok(v) => v,
        // Made a moment ago, perhaps by another server: the watch cache
        // may not have it yet; the store has.
        Err(ApiError::NotFound(_)) => match state.api.get(res, Some(NS), &name).await {
            Ok(v) => v,
            Err(ApiError::NotFound(_)) => return Err(SessionRefused::Unknown),
            Err(e) => return Err(SessionRefused::Unavailable(e.to_string())),
        },
        Err(e) => return Err(SessionRefused::Unavailable(e.to_string())),
    };
    if found.get("type").and_then(Value::as_str) != Some(SESSION_TYPE)
        || crate::system_secret::field(&found, "sha256").as_deref()
            != Some(hash_token(c.secret).as_str())
    {
        return Err(SessionRefused::Unknown);
    }
    let expires = crate::system_secret::field(&found, "expires")
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        .ok_or(SessionRefused::Unknown)?;
    if expires <= jiff::Timestamp::now() {
        remove(&state.api, c.id).await;
        return Err(SessionRefused::Expired);
    }
    let user = crate::system_secret::field(&found, "token")
        .and_then(|h| state.auth.user_by_hash(&h))
        .ok_or(SessionRefused::Revoked)?;
    let csrf = crate::system_secret::field(&found, "csrf").ok_or(SessionRefused::Unknown)?;
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
            csrf_matches(headers, &s)?;
            Ok(s.user)
        }
        .await,
    )
}

fn csrf_matches(headers: &HeaderMap, s: &Stored) -> Result<(), SessionRefused> {
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(SessionRefused::Csrf)?;
    // Compared as hashes: equal length, no early exit on a prefix.
    if hash_token(sent) == hash_token(&s.csrf) {
        Ok(())
    } else {
        Err(SessionRefused::Csrf)
    }
}

async fn remove(api: &Api, id: &str) {
    delete_named(api, &secret_name(id)).await;
}

/// Session answers are not to be kept by any cache.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn expires_of(s: &Value) -> Option<jiff::Timestamp> {
    crate::system_secret::field(s, "expires").and_then(|e| e.parse::<jiff::Timestamp>().ok())
}

/// Session Secrets matching `selector` (those of one token, or all).
async fn sessions(api: &Api, selector: &str) -> Vec<Value> {
    let (Ok(res), Ok(labels)) = (
        crate::system_secret::resource(),
        LabelSelector::parse(selector),
    ) else {
        return Vec::new();
    };
    let opts = ListOptions {
        labels,
        ..ListOptions::default()
    };
    match api.list(res, Some(NS), &opts).await {
        Ok(page) => page
            .items
            .into_iter()
            .filter(|s| s.get("type").and_then(Value::as_str) == Some(SESSION_TYPE))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing console sessions failed");
            Vec::new()
        }
    }
}

async fn delete_named(api: &Api, name: &str) {
    let Ok(res) = crate::system_secret::resource() else {
        return;
    };
    match api
        .delete(res, Some(NS), name, &DeleteOptions::default())
        .await
    {
        Ok(_) | Err(ApiError::NotFound(_)) => {}
        Err(e) => tracing::warn!(session = name, error = %e, "deleting a console session failed"),
    }
}

/// Deletes the expired sessions among `found`, and the oldest beyond `keep`.
async fn prune(api: &Api, mut found: Vec<Value>, keep: usize) {
    let now = jiff::Timestamp::now();
    found.sort_by_key(expires_of);
    let live = found
        .iter()
        .filter(|s| expires_of(s).is_some_and(|t| t > now))
        .count();
    let mut excess = live.saturating_sub(keep);
    for s in &found {
        let expired = expires_of(s).is_none_or(|t| t <= now);
        if !expired {
            if excess == 0 {
                continue;
            }
            excess -= 1;
        }
        if let Some(name) = s.pointer("/metadata/name").and_then(Value::as_str) {
            delete_named(api, name).await;
        }
    }
}

/// Deletes every expired session, every `every` (a task of the server).
pub async fn sweep_every(api: Api, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let all = sessions(&api, SESSION_LABEL).await;
        prune(&api, all, usize::MAX).await;
    }
}

fn token_label(token_hash: &str) -> String {
    token_hash.chars().take(16).collect()
}

/// What the console learns of its session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub user: String,
    pub groups: Vec<String>,
    /// Sent back in `X-CSRF-Token` with every request. Given only by the
    /// sign-in: the page keeps it in its origin's storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
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

/// The answer to a request whose session is refused: 401, or 503 when the
/// session could not be read.
pub fn refused(why: &SessionRefused) -> Response {
    if let SessionRefused::Unavailable(cause) = why {
        tracing::error!(%cause, "console session unreadable");
        return ApiError::Unavailable("the console session cannot be read now; try again".into())
            .into_response();
    }
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
    // Room for this one: the token's expired sessions and its oldest go.
    let mine = sessions(
        &state.api,
        &format!(
            "{SESSION_LABEL},{TOKEN_LABEL}={}",
            token_label(&hash_token(token))
        ),
    )
    .await;
    prune(&state.api, mine, SESSIONS_PER_TOKEN - 1).await;
    match start(&state.api, &user, token).await {
        Ok((cookie_value, info)) => {
            tracing::info!(user = %user.name, "console session started");
            let mut resp = (StatusCode::CREATED, Json(info)).into_response();
            match set_cookie(&cookie_value, SESSION_TTL) {
                Some(h) => {
                    resp.headers_mut().insert(header::SET_COOKIE, h);
                }
                None => {
                    return ApiError::Internal("the session cookie cannot be written".into())
                        .into_response();
                }
            }
            no_store(resp)
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
    let token_hash = hash_token(token);
    let obj = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": secret_name(&id), "namespace": NS,
            "labels": {SESSION_LABEL: "true", TOKEN_LABEL: token_label(&token_hash)},
        },
        "type": SESSION_TYPE,
        "data": {
            "sha256": crate::system_secret::encode(&hash_token(&secret)),
            "token": crate::system_secret::encode(&token_hash),
            "csrf": crate::system_secret::encode(&csrf),
            "expires": crate::system_secret::encode(&expires.to_string()),
        },
    });
    api.create(
        crate::system_secret::resource()?,
        Some(NS),
        obj,
        WriteOptions::default(),
    )
    .await?;
    Ok((
        format!("{id}.{secret}"),
        SessionInfo {
            user: user.name.clone(),
            groups: user.groups.clone(),
            csrf_token: Some(csrf),
            expires_at: expires.to_string(),
        },
    ))
}

/// `GET /console/session`: who the session is, when it ends. Like every
/// request by the cookie, it needs the CSRF token: the cookie alone tells
/// nothing.
pub async fn current(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(value) = cookie_of(&headers) else {
        return ApiError::Unauthorized.into_response();
    };
    let checked = async {
        same_origin(&headers, &uri)?;
        let s = load(&state, &value).await?;
        csrf_matches(&headers, &s)?;
        Ok::<_, SessionRefused>(s)
    }
    .await;
    match checked {
        Ok(s) => no_store(
            Json(SessionInfo {
                user: s.user.name,
                groups: s.user.groups,
                csrf_token: None,
                expires_at: s.expires.to_string(),
            })
            .into_response(),
        ),
        Err(why) => refused(&why),
    }
}

/// `DELETE /console/session`: signs out. The session the cookie names is
/// deleted and the cookie cleared, whether or not it is still good (an
/// expired or revoked session is signed out too). From another origin it
/// is refused like any other request.
pub async fn sign_out(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = same_origin(&headers, &uri) {
        return refused(&why);
    }
    let Some(value) = cookie_of(&headers) else {
        return ApiError::Unauthorized.into_response();
    };
    if let Some(c) = CookieValue::parse(&value) {
        // A live session needs its CSRF token to be ended; a dead one may
        // go without.
        match load(&state, &value).await {
            Ok(s) => {
                if let Err(why) = csrf_matches(&headers, &s) {
                    return refused(&why);
                }
                tracing::info!(user = %s.user.name, "console session ended");
            }
            Err(SessionRefused::Unavailable(cause)) => {
                return refused(&SessionRefused::Unavailable(cause));
            }
            Err(_) => {}
        }
        remove(&state.api, c.id).await;
    }
    let mut resp =
        Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})).into_response();
    if let Some(h) = set_cookie("", Duration::ZERO) {
        resp.headers_mut().insert(header::SET_COOKIE, h);
    }
    no_store(resp)
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
        for site in ["cross-site", "same-site"] {
            assert_eq!(
                same_origin(&headers(&[("sec-fetch-site", site)]), &path),
                Err(SessionRefused::CrossSite)
            );
        }
        assert_eq!(
            same_origin(&headers(&[("sec-fetch-site", "none")]), &path),
            Ok(())
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
