//! The web console's pages: static assets compiled into the binary and
//! served by `paddock server` at `/` on the management API's port.
//!
//! The console is a page of plain HTML, CSS and an ES module, with no build
//! step and no Node.js at run time. It holds no rights of its own: every
//! call it makes goes to the same API as the signed-in user (see the API
//! server's `session` module for how the sign-in is kept from the page's
//! scripts). What this crate owns is what the browser gets and the headers
//! that fence it in: a Content-Security-Policy that allows scripts, styles
//! and connections from this origin only, no framing, no referrer, no
//! sniffing.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// The Content-Security-Policy of every console response: nothing inline,
/// nothing from another origin, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One asset: its path, media type and bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        media_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/console/app.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/console/validate.js",
        media_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/validate.js"),
    },
    Asset {
        path: "/console/app.css",
        media_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "/console/icon.svg",
        media_type: "image/svg+xml",
        body: include_bytes!("../assets/icon.svg"),
    },
];

/// A strong validator for an asset: its bytes' SHA-256, quoted.
fn etag(body: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(body);
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Adds the headers every console response carries.
pub fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("strict-transport-security", "max-age=31536000"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn serve(asset: &'static Asset, if_none_match: Option<&HeaderValue>) -> Response {
    let tag = etag(asset.body);
    let fresh = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.media_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    // Asked again each time; a 304 when unchanged.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(resp)
}

/// The console's routes. Public: the pages hold no data; what they show
/// comes from the API, as the signed-in user.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut r = Router::new();
    for asset in ASSETS {
        r = r.route(
            asset.path,
            get(move |headers: http::HeaderMap| async move {
                serve(asset, headers.get(header::IF_NONE_MATCH))
            }),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = http::Request::get(path);
        if let Some(t) = etag {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router::<()>()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pages_come_with_their_type_and_a_strict_policy() {
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/console/app.js", "text/javascript; charset=utf-8"),
            ("/console/validate.js", "text/javascript; charset=utf-8"),
            ("/console/app.css", "text/css; charset=utf-8"),
        ] {
            let resp = get(path, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(h["content-security-policy"], CSP);
            assert_eq!(h["x-frame-options"], "DENY");
            assert_eq!(h["x-content-type-options"], "nosniff");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn an_unchanged_asset_is_not_sent_again() {
        let first = get("/console/app.js", None).await;
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/console/app.js", Some(&tag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/console/app.js", Some("\"nope\"")).await;
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn the_page_has_nothing_inline_for_the_policy_to_refuse() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains(" style="), "style attribute");
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        let js = std::str::from_utf8(ASSETS[1].body).unwrap();
        // Styles set from script go through the CSSOM, which the policy
        // allows; markup with style attributes would be refused.
        assert!(!js.contains("style=\""), "style attribute in markup");
        assert!(!js.contains("eval("), "eval");
        assert!(!js.contains("innerHTML"), "markup from strings");
    }
}
