//! Local tokens end: one issued with `paddock add-user --ttl` stops working
//! when it expires, and `paddock revoke-user` takes a user's tokens away
//! from a running server (and with them the user's console session),
//! checked with curl.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(args)
        .output()
        .expect("paddock runs")
}

/// The HTTP status of GET /version with `token`.
fn status(url: &str, ca: &str, token: &str) -> String {
    let o = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca,
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{url}/version"))
        .output()
        .expect("curl");
    stdout(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_are_revoked_on_a_running_server() {
    let s = TestServer::start().await;
    let data = s.data_dir();
    let data = data.to_str().expect("path");
    let ca = format!("{data}/pki/ca.crt");
    let url = s.url();

    // --ttl 3s: works now, refused once expired.
    let o = cli(&[
        "add-user",
        "brief",
        "--org",
        "acme",
        "--ttl",
        "3s",
        "--data-dir",
        data,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let brief = token_of(&stdout(&o));
    assert_eq!(status(&url, &ca, &brief), "200");
    let o = cli(&["add-user", "typo", "--ttl", "soon", "--data-dir", data]);
    assert!(
        !o.status.success() && stderr(&o).contains("--ttl"),
        "{}",
        stderr(&o)
    );

    // Revoked while the server runs: refused within a couple of seconds,
    // and so is the console session signed in with it.
    let o = cli(&["add-user", "gone", "--org", "acme", "--data-dir", data]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gone = token_of(&stdout(&o));
    assert_eq!(status(&url, &ca, &gone), "200");
    let jar = s.dir.path().join("jar");
    let jar = jar.to_str().expect("path");
    let o = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &ca,
            "-c",
            jar,
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", &format!("{{\"token\":\"{gone}\"}}")])
        .arg(format!("{url}/console/session"))
        .output()
        .expect("curl");
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("session");
    let csrf = format!(
        "X-CSRF-Token: {}",
        info["csrfToken"].as_str().expect("csrf")
    );
    let session = || {
        let o = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &ca,
                "-b",
                jar,
            ])
            .args(["-H", &csrf])
            .arg(format!("{url}/api/v1/namespaces/acme"))
            .output()
            .expect("curl");
        stdout(&o)
    };
    assert_ne!(session(), "401");
    let o = cli(&["revoke-user", "gone", "--data-dir", data]);
    assert!(
        o.status.success() && stdout(&o).contains("revoked 1"),
        "{}",
        stderr(&o)
    );
    let t = Instant::now();
    while status(&url, &ca, &gone) != "401" {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a revoked token still works"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(session(), "401", "the revoked user's console session");
    let o = cli(&["revoke-user", "gone", "--data-dir", data]);
    assert!(
        !o.status.success() && stderr(&o).contains("no token"),
        "{}",
        stderr(&o)
    );

    // By now the 3 s token has expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&url, &ca, &brief), "401", "an expired token");
    // The admin's is untouched.
    let admin = token_of(&std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig"));
    assert_eq!(status(&url, &ca, &admin), "200");
}
