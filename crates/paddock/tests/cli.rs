//! The `paddock` CLI against a real server: organizations, clusters, tables,
//! JSON/YAML output, scaling, deleting, exit codes and completions.

mod common;

use std::process::{Command, Output};

use common::*;

fn paddock(s: &TestServer, args: &[&str]) -> Output {
    common::paddock(&s.kubeconfig(), args)
}

fn ok(s: &TestServer, args: &[&str]) -> String {
    paddock_ok(&s.kubeconfig(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_drives_orgs_and_clusters() {
    let s = TestServer::start().await;
    assert!(ok(&s, &["org", "create", "acme"]).contains("org acme created"));
    let orgs = ok(&s, &["org", "list"]);
    assert!(
        orgs.lines().next().unwrap_or_default().starts_with("NAME"),
        "{orgs}"
    );
    assert!(
        orgs.contains("acme") && !orgs.contains("paddock-system"),
        "{orgs}"
    );

    ok(
        &s,
        &[
            "cluster",
            "create",
            "demo",
            "-n",
            "acme",
            "--workers",
            "3",
            "--cpu",
            "1",
            "--memory",
            "1Gi",
        ],
    );
    let manifest = s.dir.path().join("c.yaml");
    std::fs::write(
        &manifest,
        CLUSTER_YAML.replace("name: demo", "name: from-file"),
    )
    .expect("write");
    ok(
        &s,
        &["cluster", "create", "-f", manifest.to_str().expect("path")],
    );

    let table = ok(&s, &["cluster", "list", "-n", "acme"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "PHASE", "CONTROL", "PLANE", "NODES", "VERSION", "NODE", "VERSIONS", "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("demo") && table.contains("0/3") && table.contains("from-file"),
        "{table}"
    );
    let all = ok(&s, &["cluster", "list", "-A"]);
    assert!(
        all.lines().next().unwrap_or_default().starts_with("ORG"),
        "{all}"
    );

    let json: serde_json::Value = serde_json::from_str(&ok(
        &s,
        &["cluster", "get", "demo", "-n", "acme", "-o", "json"],
    ))
    .expect("json");
    assert_eq!(json["spec"]["nodePools"][0]["replicas"], 3);
    assert_eq!(json["spec"]["nodePools"][0]["memory"], "1Gi");
    let yaml = ok(&s, &["cluster", "get", "demo", "-n", "acme", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Cluster") && yaml.contains("replicas: 3"),
        "{yaml}"
    );

    ok(
        &s,
        &["cluster", "scale", "demo", "-n", "acme", "--workers", "5"],
    );
    let got = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "cl",
        "demo",
        "-o",
        "jsonpath={.spec.nodePools[0].replicas} {.metadata.generation}",
    ]);
    assert_eq!(got, "5 2");

    // Exit codes mean something, errors are one line.
    let out = paddock(&s, &["cluster", "get", "nope", "-n", "acme"]);
    assert_eq!(out.status.code(), Some(3), "not found");
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: ") && stderr(&out).contains("nope"),
        "{}",
        stderr(&out)
    );
    let out = paddock(&s, &["cluster", "create", "demo", "-n", "acme"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "already exists: {}",
        stderr(&out)
    );
    let out = paddock(
        &s,
        &[
            "cluster",
            "create",
            "big",
            "-n",
            "acme",
            "--control-plane",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "invalid: {}", stderr(&out));
    assert!(
        stderr(&out).contains("spec.controlPlane.replicas"),
        "{}",
        stderr(&out)
    );
    let out = paddock(
        &s,
        &[
            "cluster",
            "scale",
            "demo",
            "-n",
            "acme",
            "--workers",
            "1",
            "--pool",
            "gpu",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = paddock(&s, &["cluster", "create", "x", "--memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "cluster", "list"])
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("/nonexistent/kubeconfig"),
        "{}",
        stderr(&out)
    );

    let out = ok(&s, &["cluster", "delete", "demo", "-n", "acme", "--wait"]);
    assert!(out.contains("cluster demo deleted"), "{out}");
    assert!(
        s.kubectl_ok(&["-n", "acme", "get", "clusters", "-o", "name"])
            .contains("from-file")
    );
    let out = ok(&s, &["org", "delete", "acme", "--wait"]);
    assert!(out.contains("org acme deleted"), "{out}");
    assert!(stderr(&s.kubectl(&["get", "cl", "-n", "acme", "from-file"])).contains("NotFound"));

    let out = ok(&s, &["machine", "list", "-A"]);
    assert!(out.is_empty() || out.starts_with("ORG"), "{out}");
    assert!(ok(&s, &["host", "list"]).starts_with("NAME"));
}

#[test]
fn completions_are_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["completion", "bash"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("paddock") && text.contains("cluster"),
        "{text}"
    );
}

#[test]
fn monitoring_files_are_written_for_an_installation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("monitoring");
    let o = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["monitoring", "write"])
        .arg(&out)
        .args([
            "--server",
            "paddock-1.example:6443",
            "--server",
            "paddock-2.example:6443",
            "--ca-file",
            "/etc/paddock/ca.crt",
            "--token-file",
            "/etc/prometheus/paddock.token",
        ])
        .output()
        .expect("paddock runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(out.join("prometheus.yml")).expect("prometheus.yml");
    for part in [
        "targets: [\"paddock-1.example:6443\", \"paddock-2.example:6443\"]",
        "url: https://paddock-1.example:6443/paddock/v1/monitoring/targets",
        "credentials_file: /etc/prometheus/paddock.token",
        "scrape_interval: 15s",
    ] {
        assert!(config.contains(part), "{part} not in\n{config}");
    }
    for f in [
        "alerts.yml",
        "alerts_test.yml",
        "dashboards/paddock-fleet.json",
        "dashboards/paddock-control-plane.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // A server is required.
    let o = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["monitoring", "write"])
        .arg(&out)
        .args(["--ca-file", "x", "--token-file", "y"])
        .output()
        .expect("paddock runs");
    assert!(
        !o.status.success() && stderr(&o).contains("--server"),
        "{}",
        stderr(&o)
    );
}
