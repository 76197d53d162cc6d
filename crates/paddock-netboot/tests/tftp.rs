//! The TFTP server answering a real client: curl's TFTP, with and without
//! the blksize option, byte for byte; what is not there, or outside the
//! root, is refused.

use std::process::Command;

use paddock_netboot::tftp::Tftp;

/// `curl tftp://…` with `extra` options: (succeeded, the bytes).
fn curl(url: &str, extra: &[&str]) -> (bool, Vec<u8>) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    (o.status.success(), o.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_to_curl_with_and_without_blksize() {
    let root = tempfile::tempdir().expect("tempdir");
    // Not a multiple of any block size, and more than 65,535 bytes' worth
    // of 512-byte blocks would need roll-over: 300 KiB and a bit.
    let body: Vec<u8> = (0..307_301u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.path().join("undionly.kpxe"), &body).expect("file");
    let t = Tftp::start("127.0.0.1:0".parse().expect("addr"), root.path())
        .await
        .expect("tftp");
    let url = format!("tftp://{}/undionly.kpxe", t.addr());
    let b = url.clone();
    let (ok, got) = tokio::task::spawn_blocking(move || curl(&b, &[]))
        .await
        .expect("curl");
    assert!(ok && got == body, "512-byte blocks: {} bytes", got.len());
    let b = url.clone();
    let (ok, got) = tokio::task::spawn_blocking(move || curl(&b, &["--tftp-blksize", "1468"]))
        .await
        .expect("curl");
    assert!(ok && got == body, "1468-byte blocks: {} bytes", got.len());

    let missing = format!("tftp://{}/nothing-here", t.addr());
    let (ok, _) = tokio::task::spawn_blocking(move || curl(&missing, &[]))
        .await
        .expect("curl");
    assert!(!ok, "a missing file is an error");
    let outside = format!("tftp://{}/../../etc/passwd", t.addr());
    let (ok, got) = tokio::task::spawn_blocking(move || curl(&outside, &["--path-as-is"]))
        .await
        .expect("curl");
    assert!(!ok && got.is_empty(), "a path outside the root is refused");
}

#[tokio::test]
async fn a_root_that_is_not_a_directory_is_a_clear_error() {
    let e = Tftp::start(
        "127.0.0.1:0".parse().expect("addr"),
        std::path::Path::new("/nonexistent/ipxe"),
    )
    .await
    .err()
    .expect("refused");
    assert!(e.to_string().contains("/nonexistent/ipxe"), "{e}");
}

/// Debian's own iPXE binaries (the `ipxe` package, which scripts/deps.sh
/// installs), served from where the package puts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_debians_ipxe_binaries() {
    let root = std::path::Path::new("/usr/lib/ipxe");
    let want =
        std::fs::read(root.join("undionly.kpxe")).expect("Debian's ipxe package is installed");
    let t = Tftp::start("127.0.0.1:0".parse().expect("addr"), root)
        .await
        .expect("tftp");
    let url = format!("tftp://{}/undionly.kpxe", t.addr());
    let (ok, got) = tokio::task::spawn_blocking(move || curl(&url, &["--tftp-blksize", "1432"]))
        .await
        .expect("curl");
    assert!(ok && got == want, "{} of {} bytes", got.len(), want.len());
}
