//! Clients nobody here wrote, against a real server: the official
//! Kubernetes Python client (CRUD, errors, pagination, watch), an OpenAPI
//! validator on every served document, and schemathesis, a fuzzer that
//! derives requests from the served schema and checks that no answer is a
//! 5xx and that every answer matches that schema. Their Python environment
//! comes from `scripts/python-tools.sh` (pinned versions from PyPI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// The interpreter of the tools' environment, made (or found cached) by
/// the project's script.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PADDOCK_PYTHON") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/python-tools.sh");
    let o = Command::new(&script)
        .arg("/var/cache/paddock/python-tools")
        .output()
        .expect("python-tools.sh runs");
    assert!(o.status.success(), "python-tools.sh: {}", stderr(&o));
    PathBuf::from(stdout(&o).trim())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The admin's bearer token, from its kubeconfig.
fn token(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the admin kubeconfig")
        .trim()
        .to_owned()
}

async fn get_json(client: &kube::Client, path: &str) -> Value {
    let req = http::Request::builder()
        .uri(path)
        .body(Vec::new())
        .expect("request");
    client
        .request::<Value>(req)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_works_unchanged() {
    let s = TestServer::start().await;
    let py = python();
    let o = Command::new(&py)
        .arg(script("client.py"))
        .arg(s.kubeconfig())
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "client.py:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains("python client: ok"), "{}", stdout(&o));
}

/// Every served OpenAPI document, written to `dir`: v2, and v3 for each
/// group version the v3 index names. Returns (v3 path, file) pairs too.
async fn openapi_documents(client: &kube::Client, dir: &Path) -> (PathBuf, Vec<(String, PathBuf)>) {
    let v2 = dir.join("v2.json");
    std::fs::write(&v2, get_json(client, "/openapi/v2").await.to_string()).expect("write");
    let index = get_json(client, "/openapi/v3").await;
    let mut v3 = Vec::new();
    for (gv, entry) in index["paths"].as_object().expect("v3 paths") {
        let url = entry["serverRelativeURL"]
            .as_str()
            .expect("serverRelativeURL");
        let file = dir.join(format!("v3-{}.json", gv.replace('/', "_")));
        std::fs::write(&file, get_json(client, url).await.to_string()).expect("write");
        v3.push((gv.clone(), file));
    }
    (v2, v3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_is_valid_and_the_server_keeps_to_it() {
    let s = TestServer::start().await;
    let py = python();
    let dir = s.dir.path().join("openapi");
    std::fs::create_dir_all(&dir).expect("dir");
    let (v2, v3) = openapi_documents(&s.client, &dir).await;
    assert!(
        v3.iter().any(|(gv, _)| gv == "apis/paddock.io/v1alpha1")
            && v3.iter().any(|(gv, _)| gv == "api/v1"),
        "{v3:?}"
    );
    let o = Command::new(&py)
        .arg(script("openapi_check.py"))
        .arg(&v2)
        .args(v3.iter().map(|(_, f)| f))
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "openapi-spec-validator:\n{}{}",
        stdout(&o),
        stderr(&o)
    );

    // A namespace for the fuzzer's namespaced requests to land in.
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let ca = s.dir.path().join("ca.pem");
    let kc: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig"))
            .expect("the kubeconfig is YAML");
    let ca_b64 = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .expect("CA data");
    std::fs::write(&ca, b64(ca_b64)).expect("ca");
    let schemathesis = py.with_file_name("schemathesis");
    // Paddock's own kinds, and the core ones it serves.
    for gv in ["apis/paddock.io/v1alpha1", "api/v1"] {
        let (_, doc) = v3.iter().find(|(g, _)| g == gv).expect("served");
        // The fuzzer's copy leaves out the parameters that turn a list
        // into a watch (a stream that ends only by its timeout); watches
        // have their own tests.
        let mut fuzzed: Value =
            serde_json::from_str(&std::fs::read_to_string(doc).expect("read")).expect("json");
        for item in fuzzed["paths"].as_object_mut().expect("paths").values_mut() {
            for op in item.as_object_mut().expect("path item").values_mut() {
                if let Some(ps) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    ps.retain(|p| {
                        !matches!(
                            p["name"].as_str(),
                            Some(
                                "watch"
                                    | "allowWatchBookmarks"
                                    | "sendInitialEvents"
                                    | "timeoutSeconds"
                            )
                        )
                    });
                }
            }
        }
        let file = dir.join(format!("fuzzed-{}.json", gv.replace('/', "_")));
        std::fs::write(&file, fuzzed.to_string()).expect("write");
        let o = Command::new(&schemathesis)
            // (It keeps a cache of found examples in its working directory.)
            .current_dir(&dir)
            .env("SCHEMATHESIS_HOOKS", "")
            .args(["run", file.to_str().expect("utf-8")])
            .args(["--url", &s.url()])
            .args(["-H", &format!("Authorization: Bearer {}", token(&s.kubeconfig()))])
            .args(["--tls-verify", ca.to_str().expect("utf-8")])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
            .args(["--max-examples", "8", "--seed", "1", "--no-color", "--request-timeout", "20"])
            .args(["--phases", "examples,coverage,fuzzing", "--workers", "1"])
            .output()
            .expect("schemathesis runs");
        let out = stdout(&o);
        assert!(
            o.status.success(),
            "schemathesis on {gv}:\n{out}{}",
            stderr(&o)
        );
        // The figures, for the record (seen with --nocapture).
        if let Some(line) = out.lines().find(|l| l.contains(" generated, ")) {
            eprintln!("schemathesis {gv}: {}", line.trim());
        }
    }
}
