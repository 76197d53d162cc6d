//! The API's answers where Kubernetes has rules a client relies on:
//! metadata validated on every kind, identity that a write cannot change,
//! query parameters that are refused rather than misread, size limits, and
//! quantities kept as Kubernetes keeps them. Every refusal is checked to
//! have stored nothing.

mod common;

use common::*;
use kube::Error;
use serde_json::{Value, json};

/// A request's outcome: the object, or the error's code and `Status`.
async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
    content_type: &str,
) -> Result<Value, (u16, kube::core::Status)> {
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("json"))
        .unwrap_or_default();
    send_raw(client, method, path, &bytes, content_type).await
}

/// A request with a body sent as it is.
async fn send_raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> Result<Value, (u16, kube::core::Status)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.to_vec())
        .expect("request");
    client.request::<Value>(req).await.map_err(|e| match e {
        Error::Api(s) => (s.code, *s),
        other => panic!("{method} {path}: expected an API error, got {other}"),
    })
}

async fn post(
    client: &kube::Client,
    path: &str,
    body: &Value,
) -> Result<Value, (u16, kube::core::Status)> {
    send(client, "POST", path, Some(body), "application/json").await
}

async fn get(client: &kube::Client, path: &str) -> Result<Value, (u16, kube::core::Status)> {
    send(client, "GET", path, None, "application/json").await
}

/// One kind: where its objects live and a valid object of it named `name`.
struct Kind {
    collection: &'static str,
    object: fn(&str) -> Value,
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            collection: "/apis/paddock.io/v1alpha1/namespaces/acme/clusters",
            object: |n| json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "metadata": {"name": n}, "spec": {}}),
        },
        Kind {
            collection: "/apis/paddock.io/v1alpha1/namespaces/acme/machines",
            object: |n| {
                json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Machine", "metadata": {"name": n},
                       "spec": {"clusterName": "demo", "role": "worker", "cpu": 1, "memory": "512Mi", "disk": "5Gi"}})
            },
        },
        Kind {
            collection: "/apis/paddock.io/v1alpha1/hosts",
            object: |n| json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Host", "metadata": {"name": n}, "spec": {}}),
        },
        Kind {
            collection: "/api/v1/namespaces",
            object: |n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
        },
        Kind {
            collection: "/api/v1/namespaces/acme/secrets",
            object: |n| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n}, "data": {"k": "dg=="}}),
        },
        Kind {
            collection: "/api/v1/namespaces/acme/events",
            object: |n| {
                json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": n},
                       "involvedObject": {"kind": "Cluster", "name": "demo", "namespace": "acme"},
                       "reason": "Tested", "message": "m", "type": "Normal"})
            },
        },
        Kind {
            collection: "/apis/coordination.k8s.io/v1/namespaces/acme/leases",
            object: |n| {
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": n},
                       "spec": {"holderIdentity": "x", "leaseDurationSeconds": 10}})
            },
        },
    ]
}

fn owner(name: &str, uid: &str, controller: bool) -> Value {
    json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "name": name, "uid": uid, "controller": controller})
}

/// Bad metadata, each with the field Kubernetes names for it.
fn bad_metadata() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "label key",
            json!({"labels": {"bad key": "v"}}),
            "metadata.labels",
        ),
        (
            "label prefix",
            json!({"labels": {"Bad_Prefix/k": "v"}}),
            "metadata.labels",
        ),
        (
            "label value",
            json!({"labels": {"k": "not ok!"}}),
            "metadata.labels",
        ),
        (
            "long label value",
            json!({"labels": {"k": "v".repeat(64)}}),
            "metadata.labels",
        ),
        (
            "annotation key",
            json!({"annotations": {"a b": "v"}}),
            "metadata.annotations",
        ),
        (
            "annotations over 256 KiB",
            json!({"annotations": {"big": "x".repeat(256 * 1024)}}),
            "metadata.annotations",
        ),
        (
            "finalizer",
            json!({"finalizers": ["not a/finalizer name"]}),
            "metadata.finalizers",
        ),
        (
            "two controllers",
            json!({"ownerReferences": [owner("a", "u1", true), owner("b", "u2", true)]}),
            "metadata.ownerReferences",
        ),
        (
            "owner without uid",
            json!({"ownerReferences": [owner("a", "", false)]}),
            "metadata.ownerReferences[0].uid",
        ),
        ("name", json!({"name": "Not_A_Name"}), "metadata.name"),
    ]
}

fn causes(s: &kube::core::Status) -> String {
    format!("{} {:?}", s.message, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_metadata_is_refused_on_every_kind_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let c = &s.client;
    post(
        c,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}}),
    )
    .await
    .expect("acme");
    for kind in kinds() {
        // The valid object is accepted (so each refusal below is the
        // metadata's doing), and removed again.
        let ok = (kind.object)("valid-one");
        post(c, kind.collection, &ok)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", kind.collection));
        send(
            c,
            "DELETE",
            &format!("{}/valid-one", kind.collection),
            None,
            "application/json",
        )
        .await
        .expect("delete");
        for (what, meta, field) in bad_metadata() {
            let mut obj = (kind.object)("bad-one");
            for (k, v) in meta.as_object().expect("object") {
                obj["metadata"][k] = v.clone();
            }
            let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
            let (code, st) = post(c, kind.collection, &obj)
                .await
                .expect_err(&format!("{}: {what} accepted", kind.collection));
            assert_eq!(code, 422, "{}: {what}: {}", kind.collection, causes(&st));
            assert_eq!(st.reason, "Invalid");
            assert!(
                st.message.contains(field),
                "{}: {what}: the message names {field}: {}",
                kind.collection,
                st.message
            );
            let (code, _) = get(c, &format!("{}/{name}", kind.collection))
                .await
                .expect_err("nothing stored");
            assert_eq!(code, 404, "{}: {what}", kind.collection);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cannot_change_who_an_object_is() {
    let s = TestServer::start().await;
    let c = &s.client;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}});
    post(c, "/api/v1/namespaces", &ns).await.expect("acme");
    let path = "/api/v1/namespaces/acme/secrets";
    let created = post(
        c,
        path,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"k": "dg=="}}),
    )
    .await
    .expect("s1");
    let uid = created["metadata"]["uid"].as_str().expect("uid").to_owned();
    for (field, patch) in [
        ("metadata.name", json!({"metadata": {"name": "s2"}})),
        (
            "metadata.namespace",
            json!({"metadata": {"namespace": "other"}}),
        ),
        (
            "metadata.uid",
            json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}}),
        ),
    ] {
        let (code, st) = send(
            c,
            "PATCH",
            &format!("{path}/s1"),
            Some(&patch),
            "application/merge-patch+json",
        )
        .await
        .expect_err(&format!("{field} changed"));
        assert_eq!(code, 422, "{field}: {}", st.message);
        assert!(
            st.message.contains(field) && st.message.contains("immutable"),
            "{}",
            st.message
        );
    }
    // A PUT with another uid is refused the same way.
    let mut put = created.clone();
    put["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    let (code, st) = send(
        c,
        "PUT",
        &format!("{path}/s1"),
        Some(&put),
        "application/json",
    )
    .await
    .expect_err("uid changed by PUT");
    assert_eq!(code, 422, "{}", st.message);
    let now = get(c, &format!("{path}/s1")).await.expect("s1");
    assert_eq!(now["metadata"]["uid"], json!(uid));
    assert_eq!(
        now["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"],
        "nothing was written"
    );
    // Leaving them out keeps them.
    let ok = send(
        c,
        "PATCH",
        &format!("{path}/s1"),
        Some(&json!({"metadata": {"labels": {"a": "b"}}})),
        "application/merge-patch+json",
    )
    .await
    .expect("a label");
    assert_eq!(ok["metadata"]["uid"], json!(uid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_400s_and_change_nothing() {
    let s = TestServer::start().await;
    let c = &s.client;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}});
    post(c, "/api/v1/namespaces", &ns).await.expect("acme");
    let path = "/api/v1/namespaces/acme/secrets";
    post(
        c,
        path,
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}}),
    )
    .await
    .expect("s1");
    for (method, url, what) in [
        (
            "DELETE",
            format!("{path}/s1?gracePeriodSeconds=abc"),
            "gracePeriodSeconds",
        ),
        ("DELETE", format!("{path}/s1?dryRun=Sometimes"), "dryRun"),
        (
            "DELETE",
            format!("{path}/s1?propagationPolicy=Eventually"),
            "propagation",
        ),
        (
            "GET",
            format!("{path}?resourceVersion=1&resourceVersionMatch=Bogus"),
            "resourceVersionMatch",
        ),
        ("GET", format!("{path}?limit=-1"), "limit"),
        ("GET", format!("{path}?watch=maybe"), "watch"),
        (
            "POST",
            format!("{path}?fieldValidation=Loose"),
            "fieldValidation",
        ),
    ] {
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"}});
        let (code, st) = send(c, method, &url, Some(&body), "application/json")
            .await
            .expect_err(&format!("{method} {url} accepted"));
        assert_eq!(code, 400, "{method} {url}: {}", st.message);
        assert!(st.message.contains(what), "{method} {url}: {}", st.message);
    }
    get(c, &format!("{path}/s1"))
        .await
        .expect("s1 is still there");
    let (code, _) = get(c, &format!("{path}/s2"))
        .await
        .expect_err("s2 never made");
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_a_mebibyte_and_bad_leases_and_events_are_refused() {
    let s = TestServer::start().await;
    let c = &s.client;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}});
    post(c, "/api/v1/namespaces", &ns).await.expect("acme");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let big = b64.encode(vec![b'x'; 1024 * 1024 + 1]);
    for (path, obj, field) in [
        (
            "/api/v1/namespaces/acme/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"}, "data": {"k": big}}),
            "data",
        ),
        (
            "/apis/coordination.k8s.io/v1/namespaces/acme/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                   "spec": {"leaseDurationSeconds": 0}}),
            "spec.leaseDurationSeconds",
        ),
        (
            "/apis/coordination.k8s.io/v1/namespaces/acme/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                   "spec": {"leaseTransitions": -1}}),
            "spec.leaseTransitions",
        ),
        (
            "/api/v1/namespaces/acme/events",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
                   "involvedObject": {"kind": "Cluster", "name": "demo", "namespace": "other"}}),
            "involvedObject.namespace",
        ),
        (
            "/api/v1/namespaces/acme/events",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
                   "involvedObject": {"kind": "Cluster", "name": "demo"}, "type": "Bad"}),
            "type",
        ),
    ] {
        let (code, st) = post(c, path, &obj).await.expect_err(field);
        assert_eq!(code, 422, "{field}: {}", st.message);
        assert!(st.message.contains(field), "{field}: {}", st.message);
        let name = obj["metadata"]["name"].as_str().expect("name");
        let (code, _) = get(c, &format!("{path}/{name}"))
            .await
            .expect_err("nothing stored");
        assert_eq!(code, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_are_kept_as_kubernetes_keeps_them() {
    let s = TestServer::start().await;
    let c = &s.client;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "acme"}});
    post(c, "/api/v1/namespaces", &ns).await.expect("acme");
    let path = "/apis/paddock.io/v1alpha1/namespaces/acme/clusters";
    for (i, (written, kept)) in [
        ("1.5Gi", "1536Mi"),
        ("0.5Gi", "512Mi"),
        ("2G", "2G"),
        ("1e9", "1e9"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("q{i}");
        let got = post(
            c,
            path,
            &json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
                    "spec": {"nodePools": [{"name": "default", "replicas": 1, "memory": written}]}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{written}: {e:?}"));
        assert_eq!(
            got["spec"]["nodePools"][0]["memory"],
            json!(kept),
            "{written}"
        );
    }
    let (code, st) = post(
        c,
        path,
        &json!({"apiVersion": "paddock.io/v1alpha1", "kind": "Cluster", "metadata": {"name": "frac"},
                "spec": {"nodePools": [{"name": "default", "replicas": 1, "memory": "0.3"}]}}),
    )
    .await
    .expect_err("a fraction of a byte");
    assert_eq!(code, 422, "{}", st.message);
    assert!(
        st.message.contains("spec.nodePools[0].memory")
            && st.message.contains("whole number of bytes"),
        "{}",
        st.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_bodies_are_read_and_unknown_media_types_are_415s() {
    let s = TestServer::start().await;
    let c = &s.client;
    let yaml =
        b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: acme\n  labels: {team: blue}\n";
    let ns = send_raw(c, "POST", "/api/v1/namespaces", yaml, "application/yaml")
        .await
        .expect("a YAML body");
    assert_eq!(ns["metadata"]["labels"]["team"], "blue");
    let (code, st) = send_raw(
        c,
        "POST",
        "/api/v1/namespaces",
        b"kind: [unclosed",
        "application/yaml",
    )
    .await
    .expect_err("broken YAML");
    assert_eq!(code, 400, "{}", st.message);
    assert!(st.message.contains("YAML"), "{}", st.message);
    let (code, st) = send_raw(c, "POST", "/api/v1/namespaces", b"name=acme", "text/plain")
        .await
        .expect_err("an unknown media type");
    assert_eq!(code, 415, "{}", st.message);
    assert_eq!(st.reason, "UnsupportedMediaType");
    // A server-side apply in YAML makes the object it names.
    let apply =
        b"apiVersion: v1\nkind: Secret\nmetadata: {name: cm, namespace: acme}\ndata: {a: MQ==}\n";
    let (code, st) = send_raw(
        c,
        "PATCH",
        "/api/v1/namespaces/acme/secrets/cm",
        apply,
        "application/apply-patch+yaml",
    )
    .await
    .expect_err("an apply names its manager");
    assert_eq!(code, 400, "{}", st.message);
    assert!(st.message.contains("fieldManager"), "{}", st.message);
    let cm = send_raw(
        c,
        "PATCH",
        "/api/v1/namespaces/acme/secrets/cm?fieldManager=tool",
        apply,
        "application/apply-patch+yaml",
    )
    .await
    .expect("applied");
    assert_eq!(cm["data"]["a"], "MQ==");
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "tool");
    let (code, st) = send_raw(
        c,
        "PATCH",
        "/api/v1/namespaces/acme/secrets/cm?force=true",
        br#"{"data": {"b": "Mg=="}}"#,
        "application/merge-patch+json",
    )
    .await
    .expect_err("force is for applies");
    assert_eq!(code, 400, "{}", st.message);
    assert!(st.message.contains("force"), "{}", st.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_header_without_json_is_a_406() {
    let s = TestServer::start().await;
    let req = http::Request::builder()
        .uri("/api/v1/namespaces")
        .header("accept", "application/xml")
        .body(Vec::new())
        .expect("request");
    let (code, st) = match s.client.request::<Value>(req).await {
        Err(Error::Api(st)) => (st.code, *st),
        other => panic!("expected a 406, got {other:?}"),
    };
    assert_eq!(code, 406, "{}", st.message);
    assert_eq!(st.reason, "NotAcceptable");
    assert!(st.message.contains("application/json"), "{}", st.message);
    // kubectl's own Accept (protobuf first, then JSON) is served.
    let req = http::Request::builder()
        .uri("/api/v1/namespaces")
        .header(
            "accept",
            "application/vnd.kubernetes.protobuf, application/json",
        )
        .body(Vec::new())
        .expect("request");
    let list = s
        .client
        .request::<Value>(req)
        .await
        .expect("served as JSON");
    assert_eq!(list["kind"], "NamespaceList");
}

/// The admin's bearer token, from its kubeconfig.
fn admin_token(s: &TestServer) -> String {
    std::fs::read_to_string(s.kubeconfig())
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(str::to_owned))
        .expect("a token")
}

/// curl with the admin's token: (HTTP code, body).
fn curl(s: &TestServer, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(s.data_dir().join("pki/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", admin_token(s))])
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_limits_are_statuses_over_http1_and_http2() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    // 4 MiB of body, over the 3 MiB limit.
    let big = s.dir.path().join("big.json");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big", "namespace": "acme"},
                        "data": {"blob": "A".repeat(4 << 20)}});
    std::fs::write(&big, secret.to_string()).expect("write");
    let url = format!("{}/api/v1/namespaces/acme/secrets", s.url());
    let data = format!("@{}", big.display());
    for proto in ["--http1.1", "--http2"] {
        let (code, body) = curl(
            &s,
            &[
                proto,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
                &url,
            ],
        );
        assert_eq!(code, "413", "{proto}: {body}");
        let st: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{proto}: {e}: {body}"));
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["reason"], "RequestEntityTooLarge");
        assert!(
            st["message"].as_str().unwrap_or("").contains("3145728"),
            "{st}"
        );
    }
    // kubectl reads it.
    let o = s.kubectl(&["create", "-f", big.to_str().expect("utf-8")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("too large"), "{}", stderr(&o));
    assert!(
        !s.kubectl(&["-n", "acme", "get", "secret", "big"])
            .status
            .success(),
        "nothing stored"
    );
    // A selector longer than any URL the server takes.
    let long = format!("{url}?labelSelector=a+in+({})", "x,".repeat(20_000));
    let (code, body) = curl(&s, &["--http1.1", &long]);
    assert_eq!(code, "414", "{body}");
    let st: Value = serde_json::from_str(&body).expect("a Status");
    assert_eq!(st["kind"], "Status");
}

/// A JSON body that names a field twice: warned about by default (the last
/// value counts, as in Kubernetes), refused under `Strict` with nothing
/// stored, let be under `Ignore`. Sent with curl, as no Kubernetes client
/// writes such a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_fields_are_warned_about_refused_or_ignored() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    let url = format!("{}/api/v1/namespaces/acme/secrets", s.url());
    let body = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"{name}","labels":{{"t":"1","t":"2"}}}},"data":{{"a":"Zmlyc3Q=","a":"bGFzdA=="}}}}"#
        )
    };
    let post = |query: &str, name: &str| {
        curl(
            &s,
            &[
                "-i",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body(name),
                &format!("{url}{query}"),
            ],
        )
    };
    let (code, out) = post("", "warned");
    assert_eq!(code, "201", "{out}");
    for f in ["metadata.labels.t", "data.a"] {
        assert!(
            out.contains(&format!(r#"warning: 299 - "duplicate field \"{f}\"""#))
                || out.contains(&format!(r#"Warning: 299 - "duplicate field \"{f}\"""#)),
            "{f}: {out}"
        );
    }
    let cm = s.kubectl_ok(&["-n", "acme", "get", "secret", "warned", "-o", "json"]);
    let cm: Value = serde_json::from_str(&cm).expect("json");
    assert_eq!(cm["data"]["a"], "bGFzdA==", "the last value");
    assert_eq!(cm["metadata"]["labels"]["t"], "2");

    let (code, out) = post("?fieldValidation=Strict", "refused");
    assert_eq!(code, "400", "{out}");
    assert!(
        out.contains(r#"strict decoding error: duplicate field \"metadata.labels.t\", duplicate field \"data.a\""#),
        "{out}"
    );
    let o = s.kubectl(&["-n", "acme", "get", "secret", "refused"]);
    assert!(!o.status.success(), "nothing stored under Strict");

    let (code, out) = post("?fieldValidation=Ignore", "ignored");
    assert_eq!(code, "201", "{out}");
    assert!(!out.to_lowercase().contains("warning:"), "{out}");
}

/// `Accept: …;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1` answers
/// with the objects' metadata alone (no Secret data), for gets, lists and
/// watches, over curl and through kube-rs's metadata-only `Api`, whose
/// watcher then sees a Secret come, change and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_reads_answer_partial_object_metadata() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
    use kube::runtime::{WatchStreamExt, watcher};

    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "one",
        "-n",
        "acme",
        "--from-literal=password=hunter2",
    ]);
    let url = format!("{}/api/v1/namespaces/acme/secrets", s.url());
    let meta = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let meta_list = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

    let (code, body) = curl(
        &s,
        &["-H", &format!("Accept: {meta}"), &format!("{url}/one")],
    );
    assert_eq!(code, "200", "{body}");
    let one: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (one["kind"].as_str(), one["apiVersion"].as_str()),
        (Some("PartialObjectMetadata"), Some("meta.k8s.io/v1")),
        "{one}"
    );
    assert_eq!(one["metadata"]["name"], "one");
    assert!(
        one.get("data").is_none() && !body.contains("aHVudGVyMg"),
        "{body}"
    );

    let (code, body) = curl(&s, &["-H", &format!("Accept: {meta_list}"), &url]);
    assert_eq!(code, "200", "{body}");
    let list: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["kind"], "PartialObjectMetadataList", "{list}");
    assert!(list["metadata"]["resourceVersion"].is_string(), "{list}");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["kind"], "PartialObjectMetadata");
    assert!(!body.contains("aHVudGVyMg"), "{body}");

    // A watch from the list's revision: the next change, metadata only.
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let watch_url = format!("{url}?watch=1&resourceVersion={rv}&timeoutSeconds=5");
    let curl_watch = {
        let ca = s.data_dir().join("pki/ca.crt");
        let token = admin_token(&s);
        let accept = format!("Accept: {meta}");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "-N", "--cacert"])
                .arg(ca)
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .args(["-H", &accept, &watch_url])
                .output()
                .expect("curl runs")
        })
    };

    // kube-rs's metadata-only watcher over the same Secrets.
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(s.client.clone(), "acme");
    let mut events = watcher(api, watcher::Config::default())
        .touched_objects()
        .boxed();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("the metadata watcher lists")
        .expect("an event")
        .expect("not an error");
    assert_eq!(first.metadata.name.as_deref(), Some("one"));
    assert_eq!(
        first.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );

    Api::<Secret>::namespaced(s.client.clone(), "acme")
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"seen": "yes"}}, "stringData": {"password": "hunter3"}})),
        )
        .await
        .expect("patch");
    let changed = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("the metadata watcher sees the change")
        .expect("an event")
        .expect("not an error");
    assert_eq!(
        changed
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("seen"))
            .map(String::as_str),
        Some("yes")
    );

    let out = curl_watch.await.expect("curl watch");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let modified = lines
        .iter()
        .find(|l| l["type"] == "MODIFIED")
        .unwrap_or_else(|| panic!("no MODIFIED line in the watch: {text}"));
    assert_eq!(
        modified["object"]["kind"], "PartialObjectMetadata",
        "{text}"
    );
    assert_eq!(modified["object"]["metadata"]["annotations"]["seen"], "yes");
    assert!(
        !text.contains("aHVudGVyMw") && !text.contains("\"data\""),
        "{text}"
    );
}

/// The server's own client (its controllers' and gateway's) calls it in
/// process as `system:paddock-server`, an administrator, with a token that
/// exists only in the server's memory: it is in no file of the data
/// directory, and a client that is not the server has no way to be it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_client_is_authenticated_and_its_token_is_nowhere_on_disk() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::Api;

    let s = TestServer::start().await;
    let running = s.running.as_ref().expect("running");
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let req = http::Request::builder()
        .method("POST")
        .uri("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).expect("json"))
        .expect("request");
    let who: Value = running.loopback.request(req).await.expect("whoami");
    assert_eq!(
        who["status"]["userInfo"]["username"],
        paddock_apiserver::loopback::USER,
        "{who}"
    );
    // It is an administrator: it lists what only administrators may.
    Api::<Namespace>::all(running.loopback.clone())
        .list(&Default::default())
        .await
        .expect("the loopback client lists namespaces");

    // Every file the server wrote: none names the loopback user or holds a
    // token that authenticates as it.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&s.data_dir(), &mut all);
    assert!(!all.is_empty());
    for f in &all {
        let bytes = std::fs::read(f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(paddock_apiserver::loopback::USER),
            "{} names the loopback user",
            f.display()
        );
    }
    // A bearer token that is not the server's own is refused.
    let (code, _) = {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(s.data_dir().join("pki/ca.crt"))
            .args(["-H", "Authorization: Bearer system:paddock-server"])
            .arg(format!("{}/api/v1/namespaces", s.url()))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .output()
            .expect("curl runs");
        (String::from_utf8_lossy(&out.stdout).into_owned(), ())
    };
    assert_eq!(code, "401");
}
