//! Workload cluster access without VMs: the cluster controller's PKI and
//! bootstrap data checked by the real validators (`cloud-init schema`,
//! `openssl verify`, `kubectl config view`), and kubeconfig issuing with
//! organization boundaries that a second user tries to cross.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{TestServer, b64, eventually, file, paddock, stderr, stdout, write_files};
use serde_json::Value;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pki_bootstrap_data_and_kubeconfigs_pass_the_real_validators() {
    let s = TestServer::start_with(|c| {
        c.clusters.base_domain = "paddock.test".into();
        c.clusters.gateway_url = "https://127.0.0.1:16443".into();
    })
    .await
    .with_controllers(paddock_controllers::Config {
        base_domain: "paddock.test".into(),
        ..Default::default()
    });
    let dir = s.dir.path().to_owned();
    let w = |name: &str, body: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        p
    };
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s.kubectl_ok(&["create", "namespace", "other"]);
    s.apply(common::CLUSTER_YAML);

    // Every Machine gets bootstrap data; the cluster its PKI.
    let names: Vec<String> = eventually(30, "bootstrap data for 3 machines", || async {
        let o = s.kubectl(&[
            "-n",
            "acme",
            "get",
            "machines",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.role}{\"\\n\"}{end}",
        ]);
        let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
        (lines.len() == 3
            && lines.iter().all(|l| {
                let n = l.split(' ').next().unwrap_or_default();
                s.secret_data("acme", &format!("{n}-bootstrap"), "user-data")
                    .is_some()
            }))
        .then_some(lines)
    })
    .await;
    let ca = s
        .secret_data("acme", "demo-pki", "ca.crt")
        .expect("cluster CA");
    let ca_file = w("ca.crt", &ca);
    for k in ["etcd-ca.crt", "front-proxy-ca.crt"] {
        let p = w(k, &s.secret_data("acme", "demo-pki", k).expect(k));
        let p = p.to_str().unwrap();
        ok("openssl", &["verify", "-CAfile", p, p]);
    }
    // The service-account key pair is a pair.
    let sa_pub = w(
        "sa.pub",
        &s.secret_data("acme", "demo-pki", "sa.pub").unwrap(),
    );
    let sa_key = w(
        "sa.key",
        &s.secret_data("acme", "demo-pki", "sa.key").unwrap(),
    );
    assert_eq!(
        ok(
            "openssl",
            &["pkey", "-in", sa_key.to_str().unwrap(), "-pubout"]
        ),
        ok(
            "openssl",
            &["pkey", "-pubin", "-in", sa_pub.to_str().unwrap()]
        )
    );
    // The CA hash kubeadm pins, computed by openssl.
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1",
            ca_file.display()
        ))
        .output()
        .expect("sh");
    let ca_hash = stdout(&spki).trim().to_owned();
    assert_eq!(ca_hash.len(), 64);

    let mut init = 0;
    for line in &names {
        let (name, role) = line.split_once(' ').expect("name role");
        let ud = s
            .secret_data("acme", &format!("{name}-bootstrap"), "user-data")
            .unwrap();
        let ud_file = w(&format!("{name}.user-data"), &ud);
        let schema = ok(
            "cloud-init",
            &["schema", "--config-file", ud_file.to_str().unwrap()],
        );
        assert!(schema.contains("Valid cloud-config"), "{schema}");
        let files = write_files(&ud);
        let kubeadm = file(&files, "/etc/paddock/kubeadm.yaml");
        if role == "control-plane" {
            assert_eq!(file(&files, "/etc/kubernetes/pki/ca.crt"), ca);
        } else {
            // A worker's kubeadm join fetches the CA and checks its hash.
            assert!(
                !files
                    .iter()
                    .any(|(p, _)| p.starts_with("/etc/kubernetes/pki/")),
                "{files:?}"
            );
        }
        let nc = s
            .secret_data("acme", &format!("{name}-bootstrap"), "network-config")
            .unwrap();
        assert!(nc.contains("addresses: [10.64.0."), "{nc}");
        if role == "control-plane" {
            let crt = w(
                &format!("{name}.apiserver.crt"),
                file(&files, "/etc/kubernetes/pki/apiserver.crt"),
            );
            ok(
                "openssl",
                &[
                    "verify",
                    "-CAfile",
                    ca_file.to_str().unwrap(),
                    crt.to_str().unwrap(),
                ],
            );
            let sans = ok(
                "openssl",
                &[
                    "x509",
                    "-in",
                    crt.to_str().unwrap(),
                    "-noout",
                    "-ext",
                    "subjectAltName",
                ],
            );
            for want in [
                "DNS:demo.acme.paddock.test",
                "DNS:kubernetes.default.svc",
                "IP Address:10.96.0.1",
                "IP Address:10.64.0.1",
                &format!("DNS:{name}"),
            ] {
                assert!(sans.contains(want), "{want} not in {sans}");
            }
            let key = w(
                &format!("{name}.apiserver.key"),
                file(&files, "/etc/kubernetes/pki/apiserver.key"),
            );
            assert_eq!(
                ok(
                    "openssl",
                    &["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"]
                ),
                ok(
                    "openssl",
                    &["pkey", "-in", key.to_str().unwrap(), "-pubout"]
                )
            );
            assert!(kubeadm.contains("kind: InitConfiguration"), "{kubeadm}");
            init += 1;
        } else {
            assert!(
                !files.iter().any(|(p, _)| p.ends_with(".key")),
                "a worker gets no private keys"
            );
            assert!(kubeadm.contains("kind: JoinConfiguration"), "{kubeadm}");
            assert!(kubeadm.contains(&format!("sha256:{ca_hash}")), "{kubeadm}");
        }
    }
    assert_eq!(init, 1, "exactly one node runs kubeadm init");

    // Users: alice works in acme, bob in other.
    let data = s.data_dir();
    let alice = w(
        "alice.kubeconfig",
        &paddock_apiserver::bootstrap::add_user(&data, "alice", &["org:acme".into()]).unwrap(),
    );
    let bob = w(
        "bob.kubeconfig",
        &paddock_apiserver::bootstrap::add_user(&data, "bob", &["org:other".into()]).unwrap(),
    );
    let kc = dir.join("demo.kubeconfig");
    let o = paddock(
        &alice,
        &[
            "cluster",
            "kubeconfig",
            "demo",
            "-n",
            "acme",
            "--ttl",
            "1h",
            "--group",
            "dev",
            "--group",
            "ops,eu",
            "--output-file",
            kc.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let view = common::kubectl_with(&kc, &["config", "view", "--raw", "-o", "json"], None);
    assert!(
        view.status.success(),
        "kubectl config view: {}",
        stderr(&view)
    );
    let v: Value = serde_json::from_slice(&view.stdout).unwrap();
    let cluster = &v["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], "https://127.0.0.1:16443");
    assert_eq!(cluster["tls-server-name"], "demo.acme.paddock.test");
    assert_eq!(
        b64(cluster["certificate-authority-data"].as_str().unwrap()),
        ca.as_bytes()
    );
    let user = &v["users"][0]["user"];
    let cert = w(
        "alice.crt",
        &String::from_utf8(b64(user["client-certificate-data"].as_str().unwrap())).unwrap(),
    );
    let cert = cert.to_str().unwrap();
    ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca_file.to_str().unwrap(),
            "-purpose",
            "sslclient",
            cert,
        ],
    );
    let subject = ok(
        "openssl",
        &[
            "x509", "-in", cert, "-noout", "-subject", "-nameopt", "RFC2253",
        ],
    );
    for want in ["CN=alice", "O=dev", "O=ops\\,eu"] {
        assert!(subject.contains(want), "{want} not in {subject}");
    }
    // Valid for the hour asked, not more.
    assert!(
        run(
            "openssl",
            &["x509", "-in", cert, "-noout", "-checkend", "3500"]
        )
        .status
        .success()
    );
    assert!(
        !run(
            "openssl",
            &["x509", "-in", cert, "-noout", "-checkend", "3700"]
        )
        .status
        .success()
    );

    // Beyond the maximum TTL: invalid, naming the field.
    let o = paddock(
        &alice,
        &[
            "cluster",
            "kubeconfig",
            "demo",
            "-n",
            "acme",
            "--ttl",
            "48h",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("spec.ttl"), "{}", stderr(&o));
    // Asking for the administrators' group: refused.
    let o = paddock(
        &alice,
        &[
            "cluster",
            "kubeconfig",
            "demo",
            "-n",
            "acme",
            "--group",
            "system:masters",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));

    // Inside her organization alice manages clusters and reads machines, but
    // what the platform writes stays the platform's: status (the overlay a
    // VM joins), Machines, and the Secrets with the cluster's keys.
    let kc_alice = |args: &[&str]| common::kubectl_with(&alice, args, None);
    assert!(
        kc_alice(&["-n", "acme", "get", "clusters,machines"])
            .status
            .success()
    );
    let o = kc_alice(&[
        "-n",
        "acme",
        "patch",
        "cluster",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"overlay":{"vni":4000,"subnet":"10.64.9.0/24","gateway":"10.64.9.1"}}}"#,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("Forbidden"),
        "status patch: {}",
        stderr(&o)
    );
    for args in [
        &["-n", "acme", "get", "secret", "demo-pki"][..],
        &["-n", "acme", "get", "secrets"],
        &["-n", "acme", "delete", "machines", "--all"],
        &["-n", "acme", "get", "leases"],
    ] {
        let o = kc_alice(args);
        assert!(
            !o.status.success() && stderr(&o).contains("Forbidden"),
            "alice: kubectl {args:?}: {}",
            stderr(&o)
        );
    }
    let o = common::kubectl_with(
        &alice,
        &["-n", "acme", "apply", "-f", "-"],
        Some("apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {name: mine}\nspec: {}\n"),
    );
    assert!(
        o.status.success(),
        "alice creates a cluster: {}",
        stderr(&o)
    );
    assert!(
        kc_alice(&["-n", "acme", "delete", "cluster", "mine", "--wait=false"])
            .status
            .success()
    );

    // Bob may not cross into acme, nor see the fleet.
    let o = paddock(&bob, &["cluster", "kubeconfig", "demo", "-n", "acme"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("bob"), "{}", stderr(&o));
    for args in [
        &["-n", "acme", "get", "clusters"][..],
        &["-n", "acme", "get", "secret", "demo-pki"],
        &["get", "hosts"],
        &["get", "clusters", "-A"],
    ] {
        let o = common::kubectl_with(&bob, args, None);
        assert!(!o.status.success(), "bob: kubectl {args:?} succeeded");
        assert!(
            stderr(&o).contains("Forbidden") || stderr(&o).contains("forbidden"),
            "{}",
            stderr(&o)
        );
    }
    // ... while in his own organization he works, and a missing cluster is 404.
    common::kubectl_with(&bob, &["-n", "other", "get", "clusters"], None)
        .status
        .success()
        .then_some(())
        .expect("bob lists his own clusters");
    let o = paddock(&bob, &["cluster", "kubeconfig", "nope", "-n", "other"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

/// The Machine named to run `kubeadm init` (the PKI Secret's annotation).
fn init_machine(s: &TestServer, cluster: &str) -> Option<String> {
    Some(s.field(
        "acme",
        &format!("secret/{cluster}-pki"),
        r"{.metadata.annotations.paddock\.io/init-machine}",
    ))
    .filter(|n| !n.is_empty())
}

/// The controllers, with `status.initialization` recorded as a gateway
/// would (the tests stand in for it), and organization acme.
async fn recording_server() -> TestServer {
    let s = TestServer::start()
        .await
        .with_controllers(paddock_controllers::Config {
            initialization_recorded: true,
            ..Default::default()
        });
    s.kubectl_ok(&["create", "namespace", "acme"]);
    s
}

/// Messages of acme's Events that match a field selector.
fn event_messages(s: &TestServer, selector: &str) -> String {
    stdout(&s.kubectl(&[
        "-n",
        "acme",
        "get",
        "events",
        "--field-selector",
        selector,
        "-o",
        "jsonpath={.items[*].message}",
    ]))
}

fn control_planes(s: &TestServer, cluster: &str) -> Vec<String> {
    let o = s.kubectl(&[
        "-n",
        "acme",
        "get",
        "machines",
        "-l",
        &format!("paddock.io/role=control-plane,paddock.io/cluster={cluster}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    stdout(&o).split_whitespace().map(str::to_owned).collect()
}

/// Bootstrap data (`kubeadm` configuration) of the Machine `name`.
fn kubeadm_of(s: &TestServer, name: &str) -> Option<String> {
    let ud = s.secret_data("acme", &format!("{name}-bootstrap"), "user-data")?;
    let files = write_files(&ud);
    files
        .iter()
        .find(|(p, _)| p.ends_with("kubeadm.yaml"))
        .map(|(_, c)| c.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_init_machine_is_replaced_until_the_control_plane_initializes() {
    let s = recording_server().await;
    s.apply(common::CLUSTER_YAML);
    let (first, kubeadm) = eventually(30, "the init machine's bootstrap data", || async {
        let name = init_machine(&s, "demo")?;
        let kubeadm = kubeadm_of(&s, &name)?;
        Some((name, kubeadm))
    })
    .await;
    assert!(kubeadm.contains("kind: InitConfiguration"), "{kubeadm}");

    // Its host dies in the middle of `kubeadm init`: the Machine is gone
    // and the cluster has not initialized. The replacement initializes.
    s.kubectl_ok(&["-n", "acme", "delete", "machine", &first]);
    let second = eventually(30, "a new init machine", || async {
        init_machine(&s, "demo").filter(|n| *n != first)
    })
    .await;
    assert_eq!(control_planes(&s, "demo"), vec![second.clone()]);
    let kubeadm = eventually(30, "the replacement's bootstrap data", || async {
        kubeadm_of(&s, &second)
    })
    .await;
    assert!(
        kubeadm.contains("kind: InitConfiguration"),
        "the replacement must initialize: {kubeadm}"
    );
    let events = event_messages(&s, "reason=InitMachineReplaced");
    assert!(
        events.contains(&first) && events.contains(&second),
        "event: {events}"
    );

    // Once the control plane answered (the gateway records it), a lost init
    // Machine's replacement joins the running control plane.
    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "cluster",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"initialization":{"controlPlaneInitialized":true}}}"#,
    ]);
    eventually(10, "the controller to see the initialization", || async {
        let done = s.field(
            "acme",
            "cluster/demo",
            "{.status.initialization.controlPlaneInitialized}",
        );
        (done == "true").then_some(())
    })
    .await;
    // The controller reads it from its watch cache, a moment behind the API.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    s.kubectl_ok(&["-n", "acme", "delete", "machine", &second]);
    let third = eventually(30, "a replacement control plane", || async {
        control_planes(&s, "demo")
            .into_iter()
            .find(|n| *n != second)
            .filter(|n| kubeadm_of(&s, n).is_some())
    })
    .await;
    let kubeadm = kubeadm_of(&s, &third).expect("kubeadm config");
    assert!(
        kubeadm.contains("kind: JoinConfiguration") && !kubeadm.contains("InitConfiguration"),
        "after initialization the replacement joins: {kubeadm}"
    );
    assert_eq!(init_machine(&s, "demo"), Some(second));
}

/// Three control planes: when the init Machine is lost, the other two
/// already wait to join it, and a second init would split etcd. The
/// replacement joins too, and a Warning Event tells the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_init_machine_beside_joining_control_planes_is_left_to_the_operator() {
    let s = recording_server().await;
    s.apply(
        "apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {name: tri, namespace: acme}\n\
         spec: {controlPlane: {replicas: 3, cpu: 1, memory: 1Gi, disk: 10Gi}, nodePools: []}\n",
    );
    let first = eventually(30, "three control planes with bootstrap data", || async {
        let cps = control_planes(&s, "tri");
        (cps.len() == 3 && cps.iter().all(|n| kubeadm_of(&s, n).is_some()))
            .then(|| init_machine(&s, "tri"))
            .flatten()
    })
    .await;
    s.kubectl_ok(&["-n", "acme", "delete", "machine", &first]);
    eventually(30, "a replacement with bootstrap data", || async {
        let cps = control_planes(&s, "tri");
        (cps.len() == 3 && !cps.contains(&first))
            .then(|| {
                cps.into_iter().find_map(|n| {
                    kubeadm_of(&s, &n)
                        .filter(|k| !k.contains("InitConfiguration"))
                        .map(|_| n)
                })
            })
            .flatten()
    })
    .await;
    assert!(
        control_planes(&s, "tri")
            .iter()
            .all(|n| kubeadm_of(&s, n).is_some_and(|k| k.contains("kind: JoinConfiguration"))),
        "no second init"
    );
    assert_eq!(init_machine(&s, "tri"), Some(first.clone()));
    let events = eventually(10, "the InitMachineLost event", || async {
        Some(event_messages(&s, "reason=InitMachineLost,type=Warning")).filter(|e| !e.is_empty())
    })
    .await;
    assert!(
        events.contains(&first) && events.contains("delete them"),
        "{events}"
    );
}

/// The init Machine was bound to a host that stopped answering: the host
/// may still run it, so its replacement is given no bootstrap data (a
/// second `kubeadm init` would make a second etcd) and the cluster says what
/// it waits for, until the host is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_init_machine_on_an_unreachable_host_waits_for_the_host() {
    let s = recording_server().await;
    s.apply("apiVersion: paddock.io/v1alpha1\nkind: Host\nmetadata: {name: h-gone}\nspec: {unschedulable: true}\n");
    s.kubectl_ok(&[
        "patch",
        "host",
        "h-gone",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"NotReady"}}"#,
    ]);
    s.apply(common::CLUSTER_YAML);
    let first = eventually(30, "the init machine", || async {
        init_machine(&s, "demo")
    })
    .await;
    // Bound to h-gone (as the scheduler would have, before h-gone went quiet).
    s.kubectl_ok(&[
        "-n",
        "acme",
        "patch",
        "machine",
        &first,
        "--type=merge",
        "-p",
        r#"{"spec":{"hostName":"h-gone"}}"#,
    ]);
    eventually(30, "the init host recorded", || async {
        let host = s.field(
            "acme",
            "secret/demo-pki",
            r"{.metadata.annotations.paddock\.io/init-host}",
        );
        (host == "h-gone").then_some(())
    })
    .await;
    // Deleted, it stays held by its VM finalizer: h-gone may still run it.
    s.kubectl_ok(&["-n", "acme", "delete", "machine", &first, "--wait=false"]);
    let why = eventually(30, "the cluster to say what it waits for", || async {
        Some(s.field("acme", "cluster/demo", "{.status.conditions[0].message}"))
            .filter(|m| m.contains("h-gone"))
    })
    .await;
    assert!(
        why.contains(&first) && why.contains("kubectl delete host h-gone"),
        "{why}"
    );
    let replacement = eventually(30, "a replacement control plane", || async {
        control_planes(&s, "demo").into_iter().find(|n| *n != first)
    })
    .await;
    // A couple of controller passes (every 2 s while waiting) later, the
    // replacement still has no bootstrap data, so no VM of it can start.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        kubeadm_of(&s, &replacement).is_none(),
        "no second init while h-gone may run the first"
    );
    assert_eq!(init_machine(&s, "demo"), Some(first.clone()));
    let events = event_messages(&s, "reason=InitMachineLost");
    assert_eq!(
        events.matches("h-gone, which may still run it").count(),
        1,
        "said once: {events}"
    );

    // The operator confirms the host is gone: the replacement initializes.
    s.kubectl_ok(&["delete", "host", "h-gone"]);
    let kubeadm = eventually(30, "the replacement's bootstrap data", || async {
        kubeadm_of(&s, &replacement)
    })
    .await;
    assert!(kubeadm.contains("kind: InitConfiguration"), "{kubeadm}");
    assert_eq!(init_machine(&s, "demo"), Some(replacement));
}
