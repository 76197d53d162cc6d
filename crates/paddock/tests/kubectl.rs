//! The real `kubectl` against a real server: discovery, apply, tables,
//! patches, conflicts, watches, finalizers, cascading deletes, validation,
//! authentication and TLS verification with `curl` and `openssl`, and
//! `kubectl auth whoami|can-i`.

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
    // Encrypted at rest: the value appears nowhere in the store's files
    // (the embedded store's, or etcd's database and log), while other
    // objects' contents do.
    let key = std::fs::read(s.data_dir().join("secrets.key")).unwrap();
    assert_eq!(key.len(), 32);
    let mut raw = Vec::new();
    for f in s.store_files() {
        raw.extend(std::fs::read(f).unwrap());
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

/// `kubectl auth whoami` and `kubectl auth can-i` answer for each user as
/// the server then decides: every "yes" is tried and works, every "no" is
/// tried and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_whoami_and_can_i_answer_as_the_server_decides() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.kubectl_ok(&["create", "namespace", "other"]);
    let alice = s.dir.path().join("alice.kubeconfig");
    std::fs::write(
        &alice,
        paddock_apiserver::bootstrap::add_user(&s.data_dir(), "alice", &["org:acme".into()])
            .expect("user"),
    )
    .expect("write");
    let as_alice = |args: &[&str]| kubectl_with(&alice, args, None);

    // whoami: the name and groups the server authenticated.
    let me = as_alice(&["auth", "whoami", "-o", "json"]);
    assert!(me.status.success(), "{}", stderr(&me));
    let me: serde_json::Value = serde_json::from_str(&stdout(&me)).expect("json");
    assert_eq!(me["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        me["status"]["userInfo"]["groups"],
        serde_json::json!(["org:acme"])
    );
    let admin = s.kubectl_ok(&["auth", "whoami"]);
    assert!(admin.contains("system:masters"), "{admin}");

    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let o = as_alice(&all);
        let out = stdout(&o);
        // A "no" carries the server's reason: `no - user "alice" cannot …`.
        let answer = out.trim();
        assert!(
            answer == "yes" || answer == "no" || answer.starts_with("no - "),
            "{args:?}: {out}{}",
            stderr(&o)
        );
        assert_eq!(o.status.success(), answer == "yes", "exit code of {args:?}");
        answer == "yes"
    };
    let cluster = |ns: &str| {
        format!(
            "apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {{name: demo, namespace: {ns}}}\nspec: {{}}\n"
        )
    };
    // Yes, and it works.
    assert!(can(&["create", "clusters.paddock.io", "-n", "acme"]));
    let o = kubectl_with(&alice, &["create", "-f", "-"], Some(&cluster("acme")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(can(&["get", "clusters", "-n", "acme"]));
    assert!(
        as_alice(&["-n", "acme", "get", "clusters"])
            .status
            .success()
    );
    assert!(can(&["list", "machines", "-n", "acme"]));
    assert!(can(&["get", "namespace/acme"]));
    assert!(as_alice(&["get", "namespace", "acme"]).status.success());
    // No, and it is refused.
    let refused = |o: std::process::Output| {
        assert!(
            !o.status.success() && stderr(&o).contains("Forbidden"),
            "{}{}",
            stdout(&o),
            stderr(&o)
        );
    };
    assert!(!can(&["create", "clusters", "-n", "other"]));
    refused(kubectl_with(
        &alice,
        &["create", "-f", "-"],
        Some(&cluster("other")),
    ));
    assert!(!can(&["delete", "machines", "-n", "acme"]));
    refused(as_alice(&["-n", "acme", "delete", "machine", "m1"]));
    assert!(!can(&[
        "patch",
        "clusters",
        "--subresource=status",
        "-n",
        "acme"
    ]));
    assert!(!can(&["get", "hosts"]));
    refused(as_alice(&["get", "hosts"]));
    assert!(!can(&["get", "secrets", "-n", "acme"]));
    refused(as_alice(&["-n", "acme", "get", "secrets"]));
    assert!(!can(&["list", "clusters", "--all-namespaces"]));
    refused(as_alice(&["get", "clusters", "--all-namespaces"]));
    assert!(!can(&["get", "namespace/other"]));
    assert!(!can(&["*", "*"]));
    // Subresources: kubeconfigs are hers to issue, placement is not.
    assert!(can(&[
        "create",
        "clusters",
        "--subresource=kubeconfig",
        "-n",
        "acme"
    ]));
    assert!(!can(&[
        "create",
        "machines",
        "--subresource=binding",
        "-n",
        "acme"
    ]));
    // Non-resource URLs: discovery is public, the rest is not.
    assert!(can(&["get", "/apis"]));
    assert!(!can(&["get", "/metrics"]));
    // The admin may do everything.
    assert_eq!(s.kubectl_ok(&["auth", "can-i", "*", "*"]).trim(), "yes");

    // A SubjectAccessReview asks about someone else: admins only.
    let sar = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["org:acme"],
                 "resourceAttributes": {"namespace": "acme", "verb": "delete",
                                        "group": "paddock.io", "resource": "clusters"}}}"#;
    // (`--validate=false`: for a kind with no PATCH, kubectl validates
    // against the protobuf form of /openapi/v2, which is not served.)
    let create = ["create", "--validate=false", "-o", "json", "-f", "-"];
    let o = kubectl_with(&s.kubeconfig(), &create, Some(sar));
    assert!(o.status.success(), "{}", stderr(&o));
    let review: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(review["status"]["allowed"], true, "{review}");
    let other_ns = sar.replace(r#""namespace": "acme""#, r#""namespace": "other""#);
    let o = kubectl_with(&s.kubeconfig(), &create, Some(&other_ns));
    let review: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(review["status"]["allowed"], false, "{review}");
    assert!(
        review["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("organization \"other\"")),
        "{review}"
    );
    refused(kubectl_with(&alice, &create, Some(sar)));
    // A review that asks nothing is a 422 naming the field.
    let empty = r#"{"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {}}"#;
    let o = kubectl_with(&alice, &create, Some(empty));
    assert!(
        !o.status.success() && stderr(&o).contains("spec.resourceAttributes"),
        "{}",
        stderr(&o)
    );
}

/// `kubectl events --for KIND/NAME` selects on the involved object's kind,
/// apiVersion and name; the other field selectors kubectl users write work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_events_for_one_object() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let event = |name: &str, kind: &str, about: &str, reason: &str, source: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Event",
                "metadata": {{"name": "{name}", "namespace": "acme"}},
                "involvedObject": {{"apiVersion": "paddock.io/v1alpha1", "kind": "{kind}",
                                   "name": "{about}", "namespace": "acme"}},
                "reason": "{reason}", "message": "{reason} of {about}", "type": "Normal",
                "source": {{"component": "{source}"}}, "reportingComponent": "{source}",
                "firstTimestamp": "2026-12-01T00:00:00Z", "lastTimestamp": "2026-12-01T00:00:00Z",
                "count": 1}}"#
        )
    };
    for e in [
        event(
            "e1",
            "Cluster",
            "demo",
            "OverlayAllocated",
            "paddock-controllers",
        ),
        event("e2", "Cluster", "other", "Ready", "paddock-controllers"),
        event("e3", "Machine", "demo", "Scheduled", "paddock-scheduler"),
    ] {
        let o = s.kubectl_stdin(&["create", "-f", "-"], &e);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let out = s.kubectl_ok(&["-n", "acme", "events", "--for", "cluster/demo"]);
    assert!(out.contains("OverlayAllocated"), "{out}");
    assert!(
        !out.contains("Ready") && !out.contains("Scheduled"),
        "only demo the Cluster: {out}"
    );
    for (selector, want) in [
        ("source=paddock-scheduler", "e3"),
        ("reportingComponent=paddock-scheduler", "e3"),
        ("involvedObject.kind=Cluster,reason=Ready", "e2"),
    ] {
        let got = s.kubectl_ok(&[
            "-n",
            "acme",
            "get",
            "events",
            "--field-selector",
            selector,
            "-o",
            "name",
        ]);
        assert_eq!(got.trim(), format!("event/{want}"), "{selector}");
    }
}

/// `kubectl apply --server-side`: the server merges by the kind's structure
/// (node pools by name), records who owns which field in `managedFields`,
/// refuses to let a second manager change a field the first set (409,
/// naming the field and its manager) unless forced, and removes what a
/// manager stops naming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_apply_merges_owns_conflicts_and_prunes() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let config = |pools: &str| {
        format!(
            "apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: ssa\n  namespace: acme\n  \
             labels: {{team: blue}}\nspec:\n  nodePools:\n{pools}"
        )
    };
    let pool = |name: &str, replicas: u32| format!("  - name: {name}\n    replicas: {replicas}\n");
    let apply = |manager: &str, yaml: &str, extra: &[&str]| {
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            "-",
        ];
        args.extend_from_slice(extra);
        s.kubectl_stdin(&args, yaml)
    };
    let get = || -> serde_json::Value {
        serde_json::from_str(&s.kubectl_ok(&[
            "-n",
            "acme",
            "get",
            "cluster",
            "ssa",
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .expect("json")
    };
    let pools = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["spec"]["nodePools"]
            .as_array()
            .expect("pools")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["replicas"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };

    // The first apply makes the object; its manager owns what it named.
    let o = apply("alice", &config(&(pool("a", 1) + &pool("b", 1))), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("serverside-applied"), "{}", stdout(&o));
    let v = get();
    let managed = v["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    let alice = managed
        .iter()
        .find(|m| m["manager"] == "alice")
        .unwrap_or_else(|| panic!("alice in {managed:?}"));
    assert_eq!(alice["operation"], "Apply");
    assert_eq!(alice["fieldsType"], "FieldsV1");
    let fields = alice["fieldsV1"].to_string();
    assert!(
        fields.contains(r#"k:{\"name\":\"a\"}"#),
        "pools keyed by name: {fields}"
    );
    assert!(fields.contains("f:team"), "{fields}");

    // Applying again changes nothing.
    let rv = v["metadata"]["resourceVersion"].clone();
    let o = apply("alice", &config(&(pool("a", 1) + &pool("b", 1))), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        get()["metadata"]["resourceVersion"],
        rv,
        "a repeated apply is a no-op"
    );

    // A second manager adds its own pool: merged by key, not replaced.
    let o = apply("bob", &config(&pool("c", 2)), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = get();
    assert_eq!(
        pools(&v),
        [("a".into(), 1), ("b".into(), 1), ("c".into(), 2)],
        "bob's pool beside alice's: {v}"
    );

    // Bob changing alice's pool conflicts, naming the field and alice.
    let o = apply("bob", &config(&(pool("a", 5) + &pool("c", 2))), &[]);
    assert!(!o.status.success(), "a conflict: {}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("conflict")
            && e.contains("alice")
            && e.contains(".spec.nodePools[name=\"a\"].replicas"),
        "{e}"
    );
    assert_eq!(pools(&get())[0], ("a".into(), 1), "nothing changed");

    // Forced, bob takes the field over.
    let o = apply(
        "bob",
        &config(&(pool("a", 5) + &pool("c", 2))),
        &["--force-conflicts"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = get();
    assert_eq!(pools(&v)[0], ("a".into(), 5));

    // Alice stops naming pool b: it goes; pool a stays, since bob owns a
    // field in it.
    let o = apply("alice", &config(&pool("a", 5)), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = get();
    assert_eq!(
        pools(&v),
        [("a".into(), 5), ("c".into(), 2)],
        "b pruned: {v}"
    );

    // A plain update by another client is recorded as an Update.
    s.kubectl_ok(&["-n", "acme", "label", "cluster", "ssa", "tier=gold"]);
    let v = get();
    let managed = v["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    assert!(
        managed
            .iter()
            .any(|m| m["operation"] == "Update" && m["fieldsV1"].to_string().contains("f:tier")),
        "{managed:?}"
    );
}

/// `kubectl create --validate=warn` sends `fieldValidation=Warn`: the
/// object is made without the unknown field, and kubectl prints the
/// server's warning; `--validate=strict` is refused naming the field, and
/// `--validate=false` drops it silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn field_validation_warns_refuses_or_ignores() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let cluster = |name: &str| {
        format!(
            "apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {{name: {name}, namespace: acme}}\n\
             spec:\n  bogus: 1\n  nodePools: [{{name: default, replicas: 1}}]\n"
        )
    };
    let o = s.kubectl_stdin(
        &["create", "--validate=warn", "-f", "-"],
        &cluster("warned"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Warning: unknown field \"spec.bogus\""),
        "kubectl prints the server's warning: {}",
        stderr(&o)
    );
    assert_eq!(
        s.field("acme", "cluster/warned", "{.spec.nodePools[0].name}"),
        "default"
    );
    let o = s.kubectl_stdin(
        &["create", "--validate=strict", "-f", "-"],
        &cluster("strict"),
    );
    assert!(!o.status.success(), "strict refuses");
    assert!(
        stderr(&o).contains("unknown field \"spec.bogus\""),
        "{}",
        stderr(&o)
    );
    assert!(
        !s.kubectl(&["-n", "acme", "get", "cluster", "strict"])
            .status
            .success()
    );
    let o = s.kubectl_stdin(
        &["create", "--validate=false", "-f", "-"],
        &cluster("ignored"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Warning"), "{}", stderr(&o));
}
