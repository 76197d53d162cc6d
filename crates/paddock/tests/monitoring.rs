//! Monitoring end to end (root): the shipped rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`); `paddock dev up
//! --hosts 2 --monitoring` runs Debian's Prometheus on the lab with the
//! configuration `paddock monitoring write` renders (`promtool check
//! config` accepts it). Prometheus scrapes the server with a token of group
//! `system:monitoring` (a tenant's token gets 403, none 401); every
//! dashboard query runs in it; a host whose agent is stopped fires
//! PaddockHostDown, and a host filled by a cluster fires
//! PaddockHostCapacityNearlyFull. The audit log then records a tenant's
//! create and exec and another tenant's refused delete, with their users,
//! and holds no token and no Secret data; `paddock audit` reads it back.
//! `dev down` leaves no Prometheus behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Down, dev};
use common::*;
use kube::api::{Api, PostParams};
use paddock_api::{Cluster, Host};
use serde_json::Value;

const PROMETHEUS: &str = "http://127.0.0.1:19090";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (scripts/deps.sh test installs prometheus)");
    assert!(
        o.status.success(),
        "promtool {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Prometheus' HTTP API, on loopback.
fn query(path: &str, params: &[(&str, &str)]) -> Value {
    let mut args = vec!["-sS".to_owned(), "-G".to_owned()];
    for (k, v) in params {
        args.push("--data-urlencode".into());
        args.push(format!("{k}={v}"));
    }
    args.push(format!("{PROMETHEUS}{path}"));
    let o = Command::new("curl").args(&args).output().expect("curl");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("Prometheus {path}: {}{}", stdout(&o), stderr(&o)))
}

fn firing(alert: &str, label: (&str, &str)) -> bool {
    query("/api/v1/alerts", &[])["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| {
            a["labels"]["alertname"] == alert
                && a["labels"][label.0] == label.1
                && a["state"] == "firing"
        })
}

fn curl_metrics(server: &Path, token: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(server.join("pki/ca.crt"));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let o = c
        .arg("https://127.0.0.1:6443/metrics")
        .output()
        .expect("curl");
    let out = stdout(&o);
    let (body, code) = out.rsplit_once('\n').unwrap_or_default();
    (code.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_lab_and_alerts_fire() {
    // The shipped rules, as promtool sees them.
    let shipped = repo().join("monitoring");
    promtool(&["check", "rules", "alerts.yml"], &shipped);
    let tested = promtool(&["test", "rules", "alerts_test.yml"], &shipped);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lab");
    let _down = Down(d.clone());
    let img = lab::dev_image();
    let out = dev(&[
        "up",
        "--hosts",
        "2",
        "--monitoring",
        "--data-dir",
        d.to_str().expect("path"),
        "--image-dir",
        img.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "dev up --monitoring: {}",
        stderr(&out)
    );
    let server = d.join("server");
    let prom = d.join("prometheus");
    let checked = promtool(&["check", "config", "prometheus.yml"], &prom);
    assert!(checked.contains("SUCCESS"), "{checked}");
    // What is written is what is shipped.
    assert_eq!(
        std::fs::read_to_string(prom.join("alerts.yml")).expect("rules"),
        std::fs::read_to_string(shipped.join("alerts.yml")).expect("shipped rules")
    );

    // /metrics: the monitoring token reads it, a tenant may not, nobody else.
    let token = std::fs::read_to_string(prom.join("token")).expect("token");
    let alice = paddock_apiserver::bootstrap::add_user(&server, "alice", &["org:acme".into()])
        .expect("alice");
    let alice_kc = dir.path().join("alice.kubeconfig");
    std::fs::write(&alice_kc, &alice).expect("alice's kubeconfig");
    let alice = token_of(&alice);
    let (code, body) = curl_metrics(&server, Some(token.trim()));
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("paddock_apiserver_requests_total") && body.trim_end().ends_with("# EOF"),
        "{body}"
    );
    assert_eq!(curl_metrics(&server, Some(&alice)).0, "403");
    assert_eq!(curl_metrics(&server, None).0, "401");

    // Prometheus scrapes the server and sees both hosts Ready.
    let t = Instant::now();
    loop {
        let up = query("/api/v1/query", &[("query", "up{job=\"paddock-server\"}")]);
        let ready = query("/api/v1/query", &[("query", "sum(paddock_host_ready)")]);
        let value = |v: &Value| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        };
        if value(&up).as_deref() == Some("1") && value(&ready).as_deref() == Some("2") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "Prometheus does not see the lab: up {up}, ready hosts {ready}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "Prometheus saw the server up and 2 Ready hosts after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // The agents, discovered through the server and scraped through it.
    let agents_up = |want: &str| {
        let r = query("/api/v1/query", &[("query", "up{job=\"paddock-agents\"}")]);
        let mut by_host: Vec<(String, String)> = r["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["metric"]["host"].as_str().unwrap_or_default().to_owned(),
                    s["value"][1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        by_host.sort();
        (by_host.iter().filter(|(_, v)| v == want).count(), by_host)
    };
    let t = Instant::now();
    while agents_up("1").0 < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "agents not scraped: {:?}",
            agents_up("1").1
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let passes = query(
        "/api/v1/query",
        &[("query", "sum(paddock_agent_passes_total)")],
    );
    assert_eq!(
        passes["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "{passes}"
    );

    // Every dashboard query is one Prometheus runs.
    for (name, body) in dashboards() {
        let v: Value = serde_json::from_str(&body).expect("dashboard JSON");
        for p in v["panels"].as_array().expect("panels") {
            for target in p["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let r = query("/api/v1/query", &[("query", expr)]);
                assert_eq!(r["status"], "success", "{name}: {expr}: {r}");
            }
        }
    }

    // Stop host-1's agent; fill host-2 with a cluster.
    let pid = std::fs::read_to_string(d.join("agent-1.pid")).expect("agent pid");
    assert!(
        Command::new("kill")
            .args(["-STOP", pid.trim()])
            .status()
            .expect("kill")
            .success()
    );
    let client = client_for(&server.join("admin.kubeconfig")).await;
    paddock_ok(&server.join("admin.kubeconfig"), &["org", "create", "acme"]);
    let host2 = Api::<Host>::all(client.clone())
        .get("host-2")
        .await
        .expect("host-2");
    let cpu = host2
        .status
        .and_then(|s| s.allocatable)
        .map(|a| a.cpu)
        .expect("host-2's allocatable vCPUs");
    let spec = serde_json::from_value(serde_json::json!({
        "controlPlane": {"replicas": 1, "cpu": cpu, "memory": "256Mi", "disk": "2Gi"},
        "nodePools": []
    }))
    .expect("spec");
    Api::<Cluster>::namespaced(client.clone(), "acme")
        .create(&PostParams::default(), &Cluster::new("big", spec))
        .await
        .expect("cluster big");

    let t = Instant::now();
    let (mut down, mut full) = (None, None);
    while down.is_none() || full.is_none() {
        if down.is_none() && firing("PaddockHostDown", ("host", "host-1")) {
            down = Some(t.elapsed());
        }
        if full.is_none() && firing("PaddockHostCapacityNearlyFull", ("host", "host-2")) {
            full = Some(t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "after 300 s: host down {down:?}, capacity {full:?}; alerts: {}",
            query("/api/v1/alerts", &[])
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "PaddockHostDown fired {:.0} s after the agent stopped (lease 40 s, for 1m); PaddockHostCapacityNearlyFull {:.0} s after the cluster was made (for 1m)",
        down.unwrap_or_default().as_secs_f64(),
        full.unwrap_or_default().as_secs_f64()
    );
    assert!(
        !firing("PaddockHostDown", ("host", "host-2")),
        "a Ready host was said to be down"
    );
    // Certificates: the server's, the CA's and cluster big's CA, each a
    // year or more away.
    let certs = query(
        "/api/v1/query",
        &[(
            "query",
            "(paddock_certificate_expiry_timestamp_seconds - time()) / 86400",
        )],
    );
    let mut names: Vec<String> = certs["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|days| days > 300.0)
        })
        .filter_map(|s| s["metric"]["certificate"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, ["apiserver", "ca", "cluster/acme/big"], "{certs}");
    // The stopped agent's target is down, the other's up.
    let (_, by_host) = agents_up("0");
    assert_eq!(
        by_host,
        [
            ("host-1".to_owned(), "0".to_owned()),
            ("host-2".to_owned(), "1".to_owned())
        ],
        "agent targets"
    );
    let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();

    audit(&d, &server, &client, &alice_kc, token.trim()).await;

    drop(_down);
    let left = Command::new("pgrep")
        .args([
            "-f",
            &format!("storage.tsdb.path={}", prom.join("data").display()),
        ])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "Prometheus left running: {}",
        stdout(&left)
    );
}

fn dashboards() -> Vec<(String, String)> {
    let dir = repo().join("monitoring/dashboards");
    std::fs::read_dir(&dir)
        .expect("dashboards")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("dashboard"),
            )
        })
        .collect()
}

/// The audit log, through a tenant's create and exec, another's refused
/// delete, and a Secret written by the admin.
async fn audit(
    d: &Path,
    server: &Path,
    client: &kube::Client,
    alice: &Path,
    monitoring_token: &str,
) {
    let admin = server.join("admin.kubeconfig");
    let bob_kc =
        paddock_apiserver::bootstrap::add_user(server, "bob", &["org:globex".into()]).expect("bob");
    let bob = d.join("bob.kubeconfig");
    std::fs::write(&bob, &bob_kc).expect("bob's kubeconfig");
    // Alice creates a cluster; host-1 is back and has room.
    paddock_ok(
        alice,
        &[
            "cluster",
            "create",
            "audited",
            "-n",
            "acme",
            "--workers",
            "0",
            "--cpu",
            "1",
            "--memory",
            "256Mi",
        ],
    );
    // Bob may not delete it: refused, and recorded.
    let o = paddock(&bob, &["cluster", "delete", "audited", "-n", "acme"]);
    assert!(!o.status.success(), "bob deleted acme's cluster");
    // A Secret whose value must not reach the log.
    let secret = "s3cr3t-value-7f2c";
    let o = Command::new("kubectl")
        .args([
            "--kubeconfig",
            admin.to_str().expect("path"),
            "-n",
            "acme",
            "create",
            "secret",
            "generic",
            "audit-probe",
        ])
        .arg(format!("--from-literal=password={secret}"))
        .output()
        .expect("kubectl");
    assert!(o.status.success(), "{}", stderr(&o));
    // Alice runs a command in her VM once it runs.
    let machines: Api<paddock_api::Machine> = Api::namespaced(client.clone(), "acme");
    let t = Instant::now();
    let name = loop {
        let list = machines.list(&Default::default()).await.expect("machines");
        if let Some(m) = list.items.iter().find(|m| {
            m.spec.cluster_name == "audited"
                && m.status.as_ref().and_then(|s| s.phase)
                    == Some(paddock_api::MachinePhase::Running)
        }) {
            break kube::ResourceExt::name_any(m);
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "audited's machine never ran"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let out = paddock_ok(
        alice,
        &[
            "machine", "exec", &name, "-n", "acme", "--", "echo", "audited",
        ],
    );
    assert!(out.contains("audited"), "{out}");

    // Read back as the admin: JSON records.
    let json = |args: &[&str]| -> Vec<Value> {
        let mut a = vec!["audit", "-o", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&paddock_ok(&admin, &a)).expect("audit JSON")
    };
    let alices = json(&["--user", "alice", "--since", "10m"]);
    let has = |rs: &[Value], verb: &str, resource: &str, sub: Option<&str>, code: u64| {
        rs.iter().any(|r| {
            r["verb"] == verb
                && r["resource"] == resource
                && r["subresource"].as_str() == sub
                && r["code"] == code
                && r["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("127.0.0.1:"))
        })
    };
    assert!(
        has(&alices, "create", "clusters", None, 201),
        "alice's create: {alices:?}"
    );
    assert!(
        has(&alices, "create", "machines", Some("exec"), 200),
        "alice's exec: {alices:?}"
    );
    assert!(
        alices
            .iter()
            .all(|r| r["user"] == "alice" && r["groups"][0] == "org:acme")
    );
    let deletes = json(&["--verb", "delete", "--resource", "clusters", "-n", "acme"]);
    assert!(
        deletes.iter().any(|r| r["user"] == "bob"
            && r["code"] == 403
            && r["decision"] == "refused"
            && r["name"] == "audited"),
        "bob's refused delete: {deletes:?}"
    );
    // The table form, for people.
    let table = paddock_ok(&admin, &["audit", "--user", "bob"]);
    assert!(
        table.contains("refused") && table.contains("acme/audited"),
        "{table}"
    );
    // A tenant may not read the log.
    let o = paddock(alice, &["audit"]);
    assert!(
        !o.status.success() && stderr(&o).contains("platform admins"),
        "{}",
        stderr(&o)
    );

    // Nothing sensitive in the files: no Secret value, no token.
    let mut text = String::new();
    for e in std::fs::read_dir(server.join("audit"))
        .expect("audit dir")
        .flatten()
    {
        text.push_str(&std::fs::read_to_string(e.path()).expect("audit file"));
    }
    assert!(
        text.contains("\"resource\":\"secrets\""),
        "the Secret's create is recorded"
    );
    let admin_token = token_of(&std::fs::read_to_string(&admin).expect("admin"));
    let alice_token = token_of(&std::fs::read_to_string(alice).expect("alice"));
    for (what, needle) in [
        ("the Secret's value", secret.to_owned()),
        ("the admin's token", admin_token),
        ("alice's token", alice_token),
        ("bob's token", token_of(&bob_kc)),
        ("the monitoring token", monitoring_token.to_owned()),
    ] {
        assert!(!text.contains(&needle), "the audit log holds {what}");
    }
    println!(
        "audit: {} lines, none with a token or Secret data",
        text.lines().count()
    );
}
