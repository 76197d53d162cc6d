//! `paddock server --tftp-listen` serves Debian's iPXE binaries over TFTP
//! to a real client (curl), and refuses to start on a TFTP root that is
//! not there, saying so.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_ipxe_over_tftp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let _server = ServerProcess::spawn(
        &dir.path().join("data"),
        &["--tftp-listen".into(), format!("127.0.0.1:{port}")],
        None,
    )
    .await;
    let want = std::fs::read("/usr/lib/ipxe/undionly.kpxe")
        .expect("Debian's ipxe package is installed (scripts/deps.sh test)");
    let url = format!("tftp://127.0.0.1:{port}/undionly.kpxe");
    let o = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--tftp-blksize", "1432", &url])
            .output()
            .expect("curl")
    })
    .await
    .expect("curl");
    assert!(o.status.success(), "curl: {}", stderr(&o));
    assert!(
        o.stdout == want,
        "{} of {} bytes",
        o.stdout.len(),
        want.len()
    );
}

#[test]
fn a_missing_tftp_root_stops_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tftp-listen",
            "127.0.0.1:0",
            "--tftp-root",
            "/nonexistent/ipxe",
        ])
        .output()
        .expect("paddock server");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("--tftp-listen") && err.contains("/nonexistent/ipxe"),
        "{err}"
    );
}
