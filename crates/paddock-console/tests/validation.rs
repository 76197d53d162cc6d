//! The console's form checks (`assets/validate.js`, run by Node) and the
//! server's validation (`paddock_api`) judge the same clusters alike: the
//! same fields are refused, so the form says beside each field what the
//! server would refuse, and accepts what it would accept. Needs `node`
//! (`scripts/deps.sh test` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

use paddock_api::validation::Validate;
use serde_json::{Value, json};

fn valid() -> Value {
    json!({
        "controlPlane": {"replicas": 1, "cpu": 2, "memory": "2Gi", "disk": "10Gi"},
        "nodePools": [{"name": "workers", "replicas": 2, "cpu": 2, "memory": "2Gi", "disk": "20Gi"}]
    })
}

/// `(cluster name, spec)`: one change from a valid cluster each, and a few
/// with several.
fn cases() -> Vec<(String, Value)> {
    let mut out = vec![("web".to_owned(), valid())];
    let with = |ptr: &str, v: Value| {
        let mut s = valid();
        *s.pointer_mut(ptr).expect("pointer") = v;
        s
    };
    for name in [
        "",
        "Bad_Name",
        "-web",
        "web-",
        "a",
        &"x".repeat(40),
        &"x".repeat(41),
        "we.b",
        "w3b-1",
    ] {
        out.push((name.to_owned(), valid()));
    }
    for (ptr, values) in [
        (
            "/controlPlane/replicas",
            vec![json!(1), json!(2), json!(3), json!(0), json!(5)],
        ),
        (
            "/controlPlane/cpu",
            vec![json!(0), json!(1), json!(256), json!(257)],
        ),
        (
            "/controlPlane/memory",
            vec![
                json!("127Mi"),
                json!("128Mi"),
                json!("100M"),
                json!("1G"),
                json!("131072Ki"),
            ],
        ),
        (
            "/controlPlane/disk",
            vec![json!("1023Mi"), json!("1Gi"), json!("1G"), json!("2Ti")],
        ),
        (
            "/nodePools/0/name",
            vec![
                json!(""),
                json!("ok-pool"),
                json!("Pool"),
                json!("x".repeat(20)),
                json!("x".repeat(21)),
            ],
        ),
        (
            "/nodePools/0/replicas",
            vec![json!(0), json!(1000), json!(1001)],
        ),
        ("/nodePools/0/cpu", vec![json!(0), json!(300)]),
        ("/nodePools/0/memory", vec![json!("64Mi"), json!("512Mi")]),
        ("/nodePools/0/disk", vec![json!("512Mi"), json!("5Gi")]),
    ] {
        for v in values {
            out.push(("web".to_owned(), with(ptr, v)));
        }
    }
    let mut two = valid();
    two["nodePools"] = json!([
        {"name": "a", "replicas": 1, "cpu": 1, "memory": "1Gi", "disk": "2Gi"},
        {"name": "a", "replicas": 1, "cpu": 0, "memory": "1Mi", "disk": "2Gi"},
        {"name": "c-", "replicas": 2000, "cpu": 1, "memory": "1Gi", "disk": "1Mi"}
    ]);
    out.push(("Two_Bad".to_owned(), two));
    let mut none = valid();
    none["nodePools"] = json!([]);
    out.push(("web".to_owned(), none));
    out
}

/// The fields the server refuses, sorted.
fn server(name: &str, spec: &Value) -> Vec<String> {
    let cluster: paddock_api::Cluster = serde_json::from_value(json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name, "namespace": "acme"}, "spec": spec,
    }))
    .expect("a cluster the API parses");
    let mut fields: Vec<String> = cluster.validate().into_iter().map(|e| e.field).collect();
    fields.sort();
    fields.dedup();
    fields
}

/// The fields the console's form refuses, for every case, from Node.
fn console(cases: &[(String, Value)]) -> Vec<Vec<String>> {
    let module = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/validate.js");
    let script = format!(
        "import {{ checkCluster }} from {module:?};\n\
         let input = '';\n\
         process.stdin.on('data', (d) => input += d);\n\
         process.stdin.on('end', () => {{\n\
           const out = JSON.parse(input).map(([name, spec]) => Object.keys(checkCluster(spec, name)).sort());\n\
           process.stdout.write(JSON.stringify(out));\n\
         }});"
    );
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (install it with scripts/deps.sh test)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(cases).expect("json").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("node");
    assert!(out.status.success(), "node failed");
    serde_json::from_slice(&out.stdout).expect("node's answer")
}

#[test]
fn the_form_refuses_the_fields_the_server_refuses() {
    let cases = cases();
    let theirs = console(&cases);
    let mut refused = 0;
    for ((name, spec), js) in cases.iter().zip(&theirs) {
        let rust = server(name, spec);
        assert_eq!(
            &rust, js,
            "cluster {name:?} with spec {spec}: the server refuses {rust:?}, the form {js:?}"
        );
        refused += usize::from(!rust.is_empty());
    }
    // The cases do exercise both sides: most are refused, some are not.
    assert!(
        refused > 20 && refused < cases.len() - 10,
        "{refused} of {}",
        cases.len()
    );
}
