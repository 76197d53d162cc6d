//! The real `kubectl` against a real server: discovery, apply, tables,
//! patches, conflicts, watches, finalizers, cascading deletes, validation,
//! authentication and TLS verification with `curl` and `openssl`.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_apply_get_and_explain() {
    let s = TestServer::start().await;
    let res = s.kubectl_ok(&["api-resources"]);
    for want in [
        "clusters",
        "machines",
        "hosts",
        "machineimages",
        "namespaces",
        "secrets",
        "events",
        "leases",
    ] {
        assert!(
            res.lines().any(|l| l.starts_with(want)),
            "api-resources lacks {want}:\n{res}"
        );
    }
    assert!(res.contains("paddock.io/v1alpha1"));

    assert!(s.apply(ACME_YAML).contains("namespace/acme created"));
    assert!(
        s.apply(CLUSTER_YAML)
            .contains("cluster.paddock.io/demo created")
    );
    // Applying the same manifest again changes nothing.
    assert!(s.apply(CLUSTER_YAML).contains("unchanged"));

    let table = s.kubectl_ok(&["get", "clusters", "-n", "acme"]);
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "PHASE", "CONTROL PLANE", "NODES", "VERSION", "AGE"] {
        assert!(header.contains(col), "missing column {col}: {table}");
    }
    assert!(table.contains("0/1") && table.contains("0/2"), "{table}");

    let yaml = s.kubectl_ok(&["get", "cl", "demo", "-n", "acme", "-o", "yaml"]);
    assert!(yaml.contains("generation: 1"), "{yaml}");
    assert!(
        yaml.contains("podCidr: 192.168.0.0/16"),
        "defaults are filled in: {yaml}"
    );
    assert!(
        yaml.contains("uid:") && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );

    let explain = s.kubectl_ok(&["explain", "clusters.spec.nodePools"]);
    assert!(
        explain.contains("replicas") && explain.contains("Number of workers"),
        "{explain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patch_replace_conflict_and_validation() {
    let s = TestServer::start().await;
    s.apply(ACME_YAML);
    s.apply(CLUSTER_YAML);

    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "cluster",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"nodePools":[{"name":"default","replicas":3}]}}"#,
    ]);
    let got = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "cl",
        "demo",
        "-o",
        "jsonpath={.metadata.generation} {.spec.nodePools[0].replicas} {.spec.nodePools[0].memory}",
    ]);
    assert_eq!(
        got, "2 3 2Gi",
        "merge patch replaced the pool and defaults refilled it"
    );

    // A label is metadata: resourceVersion moves, generation does not.
    let stale = s.kubectl_ok(&["-n", "acme", "get", "cl", "demo", "-o", "json"]);
    s.kubectl_ok(&["-n", "acme", "label", "cl", "demo", "team=blue"]);
    assert_eq!(
        s.kubectl_ok(&[
            "-n",
            "acme",
            "get",
            "cl",
            "demo",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );
    let out = s.kubectl_stdin(&["replace", "-f", "-"], &stale);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Conflict") && stderr(&out).contains("the object has been modified"),
        "{}",
        stderr(&out)
    );

    let bad = r#"
apiVersion: paddock.io/v1alpha1
kind: Cluster
metadata: {name: bad, namespace: acme}
spec:
  kubernetesVersion: latest
  controlPlane: {replicas: 2}
  nodePools: [{name: default, cpu: 0}, {name: default}]
"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    for field in [
        "spec.kubernetesVersion",
        "spec.controlPlane.replicas",
        "spec.nodePools[0].cpu",
        "spec.nodePools[1].name",
    ] {
        assert!(err.contains(field), "error does not name {field}: {err}");
    }
    // A version no MachineImage carries: 422, naming the field and the
    // versions there are; nothing is stored.
    let unknown = CLUSTER_YAML
        .replace("name: demo", "name: old")
        .replace("\"1.31.2\"", "\"1.30.0\"");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &unknown);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("spec.kubernetesVersion")
            && err.contains("no MachineImage carries this version")
            && err.contains("registered versions: 1.31.2"),
        "{err}"
    );
    assert!(
        !s.kubectl(&["-n", "acme", "get", "cluster", "old"])
            .status
            .success()
    );
    // A cluster's version cannot change.
    let upgrade = CLUSTER_YAML.replace("\"1.31.2\"", "\"1.35.4\"");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &upgrade);
    assert!(
        !out.status.success() && stderr(&out).contains("spec.kubernetesVersion"),
        "{}",
        stderr(&out)
    );
    let typo = CLUSTER_YAML
        .replace("name: bad", "name: x")
        .replace("cpu: 1, memory", "cpu: 1, memori");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &typo);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"unknown field "spec.controlPlane.memori""#),
        "{}",
        stderr(&out)
    );
    let wrong_type = CLUSTER_YAML.replace("memory: 1Gi", "memory: lots");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &wrong_type);
    assert!(
        stderr(&out).contains("spec.controlPlane.memory"),
        "{}",
        stderr(&out)
    );
    // Nothing half-done: the rejected objects do not exist.
    let out = s.kubectl(&["-n", "acme", "get", "cl", "bad"]);
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_added_modified_deleted() {
    let s = TestServer::start().await;
    s.apply(ACME_YAML);
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .args([
            "get",
            "clusters",
            "-n",
            "acme",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    s.apply(CLUSTER_YAML);
    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "cl",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"nodePools":[{"name":"default","replicas":5}]}}"#,
    ]);
    s.kubectl_ok(&["-n", "acme", "delete", "cl", "demo"]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    watch.kill().expect("kill watch");
    let out = watch.wait_with_output().expect("watch output");
    let text = stdout(&out);
    let events: Vec<(String, String, u64)> = serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map(|e| {
            let e = e.expect("kubectl prints JSON events");
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["object"]["spec"]["nodePools"][0]["replicas"]
                    .as_u64()
                    .unwrap_or_default(),
            )
        })
        .collect();
    let want = [("ADDED", 2), ("MODIFIED", 5), ("DELETED", 5)]
        .map(|(t, r)| (t.to_owned(), "demo".to_owned(), r));
    assert_eq!(events, want, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finalizers_and_cascading_deletes() {
    let s = TestServer::start().await;
    s.apply(ACME_YAML);
    s.apply(CLUSTER_YAML);
    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "cl",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["test.paddock.io/hold"]}}"#,
    ]);
    s.kubectl_ok(&["-n", "acme", "delete", "cl", "demo", "--wait=false"]);
    let ts = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "cl",
        "demo",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(
        !ts.is_empty(),
        "held by its finalizer, the cluster is marked, not gone"
    );
    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "cl",
        "demo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let out = s.kubectl(&["-n", "acme", "get", "cl", "demo"]);
    assert!(
        stderr(&out).contains("NotFound"),
        "released, it is gone: {}",
        stderr(&out)
    );

    for cascade in ["background", "foreground"] {
        s.apply(CLUSTER_YAML);
        let uid = s.kubectl_ok(&[
            "-n",
            "acme",
            "get",
            "cl",
            "demo",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        for i in 0..2 {
            s.apply(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: demo-{i}\n  namespace: acme\n  ownerReferences: [{{apiVersion: paddock.io/v1alpha1, kind: Cluster, name: demo, uid: {uid}, blockOwnerDeletion: true}}]\nstringData: {{k: v}}\n"
            ));
        }
        s.kubectl_ok(&[
            "-n",
            "acme",
            "delete",
            "cl",
            "demo",
            &format!("--cascade={cascade}"),
        ]);
        let secrets = eventually(10, "dependents to go", || async {
            let out = s.kubectl_ok(&["-n", "acme", "get", "secrets", "-o", "name"]);
            out.trim().is_empty().then_some(out)
        })
        .await;
        assert!(secrets.is_empty(), "{cascade}: {secrets}");
        assert!(stderr(&s.kubectl(&["-n", "acme", "get", "cl", "demo"])).contains("NotFound"));
    }

    // Deleting the organization takes everything in it.
    s.apply(CLUSTER_YAML);
    s.kubectl_ok(&["delete", "namespace", "acme"]);
    let out = s.kubectl(&["get", "namespace", "acme"]);
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));
    let out = s.kubectl_stdin(&["apply", "-f", "-"], CLUSTER_YAML);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_needs_a_token_over_verified_tls() {
    let s = TestServer::start().await;
    let url = format!("{}/apis/paddock.io/v1alpha1/clusters", s.url());
    let ca = s.data_dir().join("pki/ca.crt");
    let ca = ca.to_str().expect("utf-8 path");
    // Verified TLS without a token: 401 with a Status.
    let out = Command::new("curl")
        .args(["-sS", "--cacert", ca, "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let body = stdout(&out);
    assert!(body.ends_with("401"), "{body}");
    assert!(
        body.contains(r#""kind":"Status""#) && body.contains("Unauthorized"),
        "{body}"
    );
    for bad in ["Bearer nope", "Basic YWRtaW46YWRtaW4="] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                ca,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Authorization: {bad}"),
                &url,
            ])
            .output()
            .expect("curl");
        assert_eq!(stdout(&out), "401");
    }
    // A kubeconfig with a wrong token is refused too.
    let good = std::fs::read_to_string(s.kubeconfig()).expect("kubeconfig");
    let forged = s.dir.path().join("forged.kubeconfig");
    let token = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("token");
    std::fs::write(&forged, good.replace(token, "forged-token")).expect("write");
    let out = kubectl_with(&forged, &["get", "namespaces"], None);
    assert!(
        !out.status.success() && stderr(&out).contains("provide credentials"),
        "{}",
        stderr(&out)
    );
    // The token is stored hashed only.
    let tokens = std::fs::read_to_string(s.data_dir().join("tokens.json")).expect("tokens");
    assert!(!tokens.contains(token) && tokens.contains("sha256"));
    // The serving certificate verifies against the CA with openssl.
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            ca,
            s.data_dir()
                .join("pki/apiserver.crt")
                .to_str()
                .expect("path"),
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", stderr(&out));
    // Plain HTTP gets nowhere.
    let plain = url.replace("https://", "http://");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &plain])
        .output()
        .expect("curl");
    assert_ne!(stdout(&out), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_kubectl_commands_send_protobuf() {
    let s = TestServer::start().await;
    assert!(
        s.kubectl_ok(&["create", "namespace", "acme"])
            .contains("namespace/acme created")
    );
    s.kubectl_ok(&[
        "-n",
        "acme",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=user=ops",
        "--from-literal=pass=s3cret",
    ]);
    let got = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "secret",
        "creds",
        "-o",
        "jsonpath={.type} {.data.user}",
    ]);
    assert_eq!(got, "Opaque b3Bz");
    // Encrypted at rest: the value appears nowhere in the store's files,
    // while other objects' contents do.
    let key = std::fs::read(s.data_dir().join("secrets.key")).unwrap();
    assert_eq!(key.len(), 32);
    let mut raw = Vec::new();
    for e in std::fs::read_dir(s.data_dir().join("store")).unwrap() {
        raw.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"acme"),
        "the store file holds the namespace in the clear"
    );
    for secret in [&b"s3cret"[..], b"czNjcmV0", b"pass"] {
        assert!(
            !has(secret),
            "{:?} found in the store",
            String::from_utf8_lossy(secret)
        );
    }
    let table = s.kubectl_ok(&["-n", "acme", "get", "secrets"]);
    assert!(
        table.contains("creds") && table.contains("Opaque") && table.contains('2'),
        "{table}"
    );
    let out = s.kubectl(&["create", "namespace", "Bad_Name"]);
    assert!(
        !out.status.success() && stderr(&out).contains("metadata.name"),
        "{}",
        stderr(&out)
    );
}
