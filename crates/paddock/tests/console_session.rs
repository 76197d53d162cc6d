//! Console sessions over real HTTP with curl (no browser): a watch opened
//! with the session cookie ends by the server's console watch limit (the
//! page opens it again, and the session is checked again, so a sign-out
//! or a revoked token ends what the page sees within that time); the same
//! watch with a bearer token lasts as asked; after sign-out the cookie and
//! token get 401.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn curl(args: &[&str]) -> (String, Duration) {
    let t = Instant::now();
    let o = Command::new("curl")
        .args(["-sS"])
        .args(args)
        .output()
        .expect("curl");
    (stdout(&o), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_watch_is_reopened_within_the_limit_and_ends_with_the_session() {
    let s = TestServer::start_with(|c| c.console_watch_limit = Duration::from_secs(2)).await;
    let dir = s.dir.path();
    let ca = dir.join("data/pki/ca.crt");
    let ca = ca.to_str().expect("path");
    let jar = dir.join("jar");
    let jar = jar.to_str().expect("path");
    let token = token_of(&std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig"));
    let url = s.url();
    let (signed, _) = curl(&[
        "--cacert",
        ca,
        "-c",
        jar,
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!("{{\"token\":\"{token}\"}}"),
        &format!("{url}/console/session"),
    ]);
    let info: serde_json::Value = serde_json::from_str(&signed).expect("session JSON");
    let csrf = info["csrfToken"].as_str().expect("csrf token").to_owned();
    let csrf_header = format!("X-CSRF-Token: {csrf}");
    let watch = format!("{url}/api/v1/namespaces?watch=1&timeoutSeconds=30");

    // By the cookie: ended by the server after the 2 s limit, not 30 s.
    let (body, took) = curl(&[
        "--cacert",
        ca,
        "-b",
        jar,
        "-H",
        &csrf_header,
        "--max-time",
        "20",
        &watch,
    ]);
    assert!(body.contains("\"ADDED\""), "{body}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "a cookie watch lasted {took:?}"
    );
    // By the bearer token: as long as asked (4 s here), the limit is the console's.
    let (_, took) = curl(&[
        "--cacert",
        ca,
        "-H",
        &format!("Authorization: Bearer {token}"),
        "--max-time",
        "20",
        &format!("{url}/api/v1/namespaces?watch=1&timeoutSeconds=4"),
    ]);
    assert!(
        took >= Duration::from_millis(3500),
        "a token watch lasted {took:?}"
    );

    // Signed out: the same cookie and CSRF token open nothing.
    let (out, _) = curl(&[
        "--cacert",
        ca,
        "-b",
        jar,
        "-X",
        "DELETE",
        "-H",
        &csrf_header,
        &format!("{url}/console/session"),
    ]);
    assert!(out.contains("Success"), "{out}");
    let (body, took) = curl(&[
        "--cacert",
        ca,
        "-b",
        jar,
        "-H",
        &csrf_header,
        "-w",
        "%{http_code}",
        &watch,
    ]);
    assert!(body.ends_with("401"), "after sign-out: {body}");
    assert!(took < Duration::from_secs(5));
}
