//! A host agent's credential (`paddock add-host`) acts for its own host
//! only. With the real `kubectl`, host h1 reads what it needs to run VMs,
//! registers itself and renews its own Lease, writes the status of its own
//! Machines and reads their bootstrap Secrets — and every attempt to cross
//! to another host's Machines, Secrets, Host or Lease, to a cluster's CA, or
//! to a tenant's rights is a 403 that names the user and the reason.
//! (The end-to-end tests run every lab agent on such a credential, so what
//! an agent needs is proven allowed there.)

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{TestServer, kubectl_with, stderr, stdout};

const MACHINES: &str = r#"
apiVersion: paddock.io/v1alpha1
kind: Machine
metadata: {name: m1, namespace: acme}
spec: {clusterName: demo, role: worker, cpu: 1, memory: 256Mi, disk: 1Gi, hostName: h1, bootstrapSecret: m1-bootstrap}
---
apiVersion: paddock.io/v1alpha1
kind: Machine
metadata: {name: m2, namespace: acme}
spec: {clusterName: demo, role: worker, cpu: 1, memory: 256Mi, disk: 1Gi, hostName: h2, bootstrapSecret: m2-bootstrap}
---
apiVersion: v1
kind: Secret
metadata: {name: m1-bootstrap, namespace: acme}
stringData: {user-data: "for m1"}
---
apiVersion: v1
kind: Secret
metadata: {name: m2-bootstrap, namespace: acme}
stringData: {user-data: "for m2"}
---
apiVersion: v1
kind: Secret
metadata: {name: demo-pki, namespace: acme}
stringData: {ca.key: "the cluster CA's key"}
---
apiVersion: paddock.io/v1alpha1
kind: Host
metadata: {name: h2}
spec: {}
"#;

fn lease(name: &str) -> String {
    format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: paddock-system}}\nspec: {{holderIdentity: {name}, leaseDurationSeconds: 10}}\n"
    )
}

fn host(name: &str) -> String {
    format!("apiVersion: paddock.io/v1alpha1\nkind: Host\nmetadata: {{name: {name}}}\nspec: {{}}\n")
}

fn allowed(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = kubectl_with(kc, args, stdin);
    assert!(o.status.success(), "kubectl {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Refused with a 403 whose message contains `why`.
fn refused(kc: &Path, args: &[&str], stdin: Option<&str>, why: &str) {
    let o: Output = kubectl_with(kc, args, stdin);
    let err = stderr(&o);
    assert!(!o.status.success(), "kubectl {args:?} was allowed");
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "kubectl {args:?}: not a 403: {err}"
    );
    assert!(err.contains(why), "kubectl {args:?}: {why:?} not in {err}");
}

fn add_host(s: &TestServer, name: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["add-host", name, "--data-dir"])
        .arg(s.data_dir())
        .output()
        .expect("paddock add-host runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_credential_acts_for_its_own_host_only() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.apply(MACHINES);
    let h1 = s.host_kubeconfig("h1");

    // What an agent needs: the fleet's Hosts, Machines, Clusters and images.
    let all = allowed(&h1, &["get", "machines", "-A", "-o", "name"], None);
    assert!(all.contains("m1") && all.contains("m2"), "{all}");
    for args in [
        &["get", "hosts"][..],
        &["get", "clusters", "-A"],
        &["get", "machineimages"],
    ] {
        allowed(&h1, args, None);
    }

    // Its own bootstrap Secret, and no other Secret.
    let data = allowed(
        &h1,
        &[
            "-n",
            "acme",
            "get",
            "secret",
            "m1-bootstrap",
            "-o",
            "jsonpath={.data.user-data}",
        ],
        None,
    );
    assert_eq!(common::b64(&data), b"for m1");
    let not_bootstrap = r#"not the bootstrap Secret of a Machine bound to host "h1""#;
    refused(
        &h1,
        &["-n", "acme", "get", "secret", "m2-bootstrap"],
        None,
        not_bootstrap,
    );
    refused(
        &h1,
        &["-n", "acme", "get", "secret", "demo-pki"],
        None,
        not_bootstrap,
    );
    refused(&h1, &["-n", "acme", "get", "secrets"], None, "host:h1");
    refused(&h1, &["get", "secrets", "-A"], None, "host:h1");

    // Status of its own Machines; nothing else of any Machine.
    let status = |m: &str| {
        [
            "-n",
            "acme",
            "patch",
            "machine",
            m,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ]
        .map(str::to_owned)
    };
    let args = status("m1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    allowed(&h1, &args, None);
    let args = status("m2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&h1, &args, None, r#"the Machine is not bound to host "h1""#);
    let phase = s.kubectl_ok(&[
        "-n",
        "acme",
        "get",
        "machine",
        "m2",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase.trim(), "", "m2's status was not written");
    refused(
        &h1,
        &[
            "-n",
            "acme",
            "patch",
            "machine",
            "m1",
            "--type=merge",
            "-p",
            r#"{"spec":{"hostName":"h2"}}"#,
        ],
        None,
        "host:h1",
    );
    refused(
        &h1,
        &["-n", "acme", "delete", "machine", "m1"],
        None,
        "host:h1",
    );

    // Registers its own Host and writes its status; not another's, and not
    // its own spec (cordoning is the operator's).
    refused(
        &h1,
        &["create", "-f", "-"],
        Some(&host("h3")),
        r#"a host may only register itself, as "h1""#,
    );
    // ... and not with BMC settings, which name the credentials the platform
    // would send to the BMC address given.
    refused(
        &h1,
        &["create", "-f", "-"],
        Some(&host("h1").replace(
            "spec: {}",
            "spec: {bmc: {driver: redfish, address: \"redfish://10.9.9.9\", credentialsSecret: bmc-h2}}",
        )),
        "without BMC settings",
    );
    allowed(&h1, &["create", "-f", "-"], Some(&host("h1")));
    allowed(
        &h1,
        &[
            "patch",
            "host",
            "h1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
        None,
    );
    refused(
        &h1,
        &[
            "patch",
            "host",
            "h2",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready"}}"#,
        ],
        None,
        "host:h1",
    );
    refused(
        &h1,
        &[
            "patch",
            "host",
            "h1",
            "--type=merge",
            "-p",
            r#"{"spec":{"unschedulable":false}}"#,
        ],
        None,
        "host:h1",
    );
    refused(&h1, &["delete", "host", "h2"], None, "host:h1");

    // Its own Lease, not another host's.
    allowed(&h1, &["create", "-f", "-"], Some(&lease("host-h1")));
    allowed(
        &h1,
        &["-n", "paddock-system", "get", "lease", "host-h1"],
        None,
    );
    // Nothing it writes may claim ownership: finalizers and owner
    // references would let it hold up other objects' deletion.
    for (kind, patch) in [
        (
            "merge",
            r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
        ),
        (
            "json",
            r#"[{"op":"add","path":"/metadata/ownerReferences","value":[{"apiVersion":"paddock.io/v1alpha1","kind":"Cluster","name":"demo","uid":"0000"}]}]"#,
        ),
        // The whole document replaced: the request names no metadata path,
        // the object it stores has a finalizer.
        (
            "json",
            r#"[{"op":"replace","path":"","value":{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"host-h1","namespace":"paddock-system","finalizers":["example.com/hold"]},"spec":{"holderIdentity":"host-h1"}}}]"#,
        ),
        (
            "json",
            r#"[{"op":"add","path":"/spec/holderIdentity","value":"x"},{"op":"replace","path":"","value":{"metadata":{"name":"host-h1","namespace":"paddock-system","ownerReferences":[{"apiVersion":"v1","kind":"Namespace","name":"acme","uid":"0000"}]}}}]"#,
        ),
        (
            "json",
            r#"[{"op":"add","path":"/spec/x","value":["example.com/hold"]},{"op":"move","from":"/spec/x","path":"/metadata/finalizers"}]"#,
        ),
        (
            "json",
            r#"[{"op":"add","path":"/spec/x","value":["example.com/hold"]},{"op":"copy","from":"/spec/x","path":"/metadata/finalizers"}]"#,
        ),
    ] {
        refused(
            &h1,
            &[
                "-n",
                "paddock-system",
                "patch",
                "lease",
                "host-h1",
                &format!("--type={kind}"),
                "-p",
                patch,
            ],
            None,
            "may not set finalizers or owner references",
        );
    }
    allowed(
        &h1,
        &[
            "-n",
            "paddock-system",
            "patch",
            "lease",
            "host-h1",
            "--type=merge",
            "-p",
            r#"{"spec":{"leaseDurationSeconds":20}}"#,
        ],
        None,
    );
    refused(
        &h1,
        &["create", "-f", "-"],
        Some(&lease("host-h2")),
        r#"a host may only create "host-h1""#,
    );
    refused(
        &h1,
        &["-n", "paddock-system", "get", "lease", "overlay-4096"],
        None,
        "host:h1",
    );

    // No tenant rights: clusters, kubeconfigs, exec.
    refused(
        &h1,
        &["-n", "acme", "apply", "-f", "-"],
        Some("apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {name: mine}\nspec: {}\n"),
        "host:h1",
    );
    refused(
        &h1,
        &[
            "create",
            "--raw",
            "/apis/paddock.io/v1alpha1/namespaces/acme/clusters/demo/kubeconfig",
            "-f",
            "-",
        ],
        Some("{}"),
        "host:h1",
    );
    refused(
        &h1,
        &[
            "create",
            "--raw",
            "/apis/paddock.io/v1alpha1/namespaces/acme/machines/m1/exec",
            "-f",
            "-",
        ],
        Some(r#"{"command":["true"]}"#),
        "host:h1",
    );

    // The name alone grants nothing: a tenant called "host:h2" is a tenant.
    let fake = s.dir.path().join("fake.kubeconfig");
    std::fs::write(
        &fake,
        paddock_apiserver::bootstrap::add_user(&s.data_dir(), "host:h2", &["org:acme".into()])
            .expect("add user"),
    )
    .expect("write kubeconfig");
    refused(
        &fake,
        &["-n", "acme", "get", "secret", "m2-bootstrap"],
        None,
        "host:h2",
    );

    // Issuing: a bad name is refused naming the field; a second credential
    // for the same host is refused.
    let o = add_host(&s, "Bad_Name");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid host name"), "{}", stderr(&o));
    let o = add_host(&s, "h1");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    // Host names are DNS subdomains, as Host objects' names are.
    let o = add_host(&s, "node1.rack2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("host:node1.rack2"), "{}", stdout(&o));

    // Once its VM is gone, a host releases the VM finalizer of its own
    // deleted Machine, and does nothing else with that right.
    for m in ["m1", "m2"] {
        s.kubectl_ok(&[
            "-n",
            "acme",
            "patch",
            "machine",
            m,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["paddock.io/vm"]}}"#,
        ]);
        s.kubectl_ok(&["-n", "acme", "delete", "machine", m, "--wait=false"]);
    }
    let release = |m: &str, kind: &str, patch: &str| {
        [
            "-n", "acme", "patch", "machine", m, "--type", kind, "-p", patch,
        ]
        .map(str::to_owned)
    };
    let only = "may only remove the finalizer";
    for (m, kind, patch) in [
        ("m2", "merge", r#"{"metadata":{"finalizers":null}}"#),
        (
            "m1",
            "merge",
            r#"{"metadata":{"finalizers":null},"spec":{"cpu":2}}"#,
        ),
        (
            "m1",
            "json",
            r#"[{"op":"replace","path":"","value":{"apiVersion":"paddock.io/v1alpha1","kind":"Machine","metadata":{"name":"m1","namespace":"acme"},"spec":{"clusterName":"demo","role":"worker","cpu":1,"memory":"256Mi","disk":"1Gi","hostName":"h2"}}}]"#,
        ),
    ] {
        let args = release(m, kind, patch);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&h1, &args, None, only);
    }
    let args = release(
        "m1",
        "json",
        r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    allowed(&h1, &args, None);
    let left = s.kubectl_ok(&["-n", "acme", "get", "machines", "-o", "name"]);
    assert_eq!(
        left.trim(),
        "machine.paddock.io/m2",
        "m1 is gone, m2 is held"
    );
}

/// An owner in another namespace holds up nothing: a Lease in
/// `paddock-system` that names a tenant's Cluster as a blocking owner, with
/// a finalizer of its own, does not keep the Cluster's foreground deletion
/// from finishing (as in Kubernetes, the reference does not count).
#[tokio::test(flavor = "multi_thread")]
async fn an_owner_in_another_namespace_holds_up_no_deletion() {
    let s = TestServer::start().await;
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.apply("apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {name: demo, namespace: acme}\nspec: {}\n");
    let uid = s.field("acme", "cluster/demo", "{.metadata.uid}");
    assert!(!uid.is_empty(), "the cluster's uid");
    s.apply(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: stray\n  namespace: paddock-system\n  \
         finalizers: [example.com/hold]\n  ownerReferences:\n  - {{apiVersion: paddock.io/v1alpha1, kind: Cluster, name: demo, uid: {}, blockOwnerDeletion: true}}\n",
        uid
    ));
    let o = s.kubectl(&[
        "-n",
        "acme",
        "delete",
        "cluster",
        "demo",
        "--cascade=foreground",
        "--timeout=20s",
    ]);
    assert!(o.status.success(), "foreground delete: {}", stderr(&o));
    let o = s.kubectl(&["-n", "acme", "get", "cluster", "demo"]);
    assert!(!o.status.success(), "the cluster is gone");
}
