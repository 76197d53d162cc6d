//! The server's own client: the controllers and the gateway that run in
//! the `paddock server` process call its routes in process, with no socket
//! and no TLS between them (two TLS ends and the kernel's loopback were a
//! sixth of the server's CPU at 10,000 Machines). Everything past the
//! transport is the same as for any client: the request carries a bearer
//! token, issued at start and known only to this process's memory, and
//! goes through authentication, authorization, limits, admission and the
//! store like every other.

use axum::Router;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use tower::ServiceBuilder;

use crate::auth::{ADMIN_GROUP, Authenticator, User};

/// Who the loopback client is.
pub const USER: &str = "system:paddock-server";

/// Who the leader's loops are: their writes hold only within the leader's
/// term ([`crate::leader`]), and are refused on a server that does not lead.
pub const CONTROLLERS: &str = "system:paddock-controllers";

/// A client of `app` authenticated as [`USER`] (an administrator).
pub fn client(app: Router, auth: &Authenticator) -> kube::Client {
    client_as(app, auth, USER)
}

/// A client of `app` authenticated as `user` (an administrator).
pub fn client_as(app: Router, auth: &Authenticator, user: &str) -> kube::Client {
    let token = auth.issue_in_memory(User {
        name: user.into(),
        groups: vec![ADMIN_GROUP.into()],
    });
    // A generated token is URL-safe base64: always a valid header value.
    let bearer = HeaderValue::try_from(format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let service = ServiceBuilder::new()
        .map_request(move |mut req: http::Request<kube::client::Body>| {
            req.headers_mut().insert(AUTHORIZATION, bearer.clone());
            req
        })
        .service(app);
    kube::Client::new(service, "default")
}
