//! End to end with real VMs: the gateway routes TLS by SNI to each
//! cluster's control plane over that cluster's overlay (verified with the
//! cluster CA by curl, openssl and kubectl), refuses names of no cluster,
//! keeps clusters apart, and forwards ingress ports to healthy workers —
//! behind a real HAProxy configured with what Paddock renders, which stops
//! reaching a worker whose VM is stopped.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::lab::{self, Lab};
use common::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use paddock_api::{Cluster, ClusterPhase, Machine, MachineRole};

const GW_IP: &str = "127.77.0.1";
const GW_PORT: u16 = 16443;
const LB_IP: &str = "127.78.0.1";
const DOMAIN: &str = "paddock.test";

fn exec(s: &TestServer, vm: &str, cmd: &str) -> (bool, String) {
    machine_exec(s, "acme", vm, 20, cmd)
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl")
}

fn resolve(name: &str) -> String {
    format!("{name}:{GW_PORT}:{GW_IP}")
}

/// `GET https://<name>:<gateway port>/` through the gateway, verified with `ca`.
fn curl_gateway(ca: &Path, name: &str) -> Output {
    curl(&[
        "--cacert",
        ca.to_str().expect("utf-8 path"),
        "--resolve",
        &resolve(name),
        &format!("https://{name}:{GW_PORT}/"),
    ])
}

async fn machines_of(api: &Api<Machine>, cluster: &str) -> Vec<Machine> {
    api.list(&ListParams::default().labels(&format!("paddock.io/cluster={cluster}")))
        .await
        .expect("list")
        .items
}

fn qemu_pid(lab: &Lab, m: &Machine) -> u32 {
    let host: usize = m
        .spec
        .host_name
        .as_deref()
        .and_then(|h| h.strip_prefix("host-"))
        .and_then(|i| i.parse().ok())
        .expect("bound to a lab host");
    let uid = m.uid().expect("uid");
    std::fs::read_to_string(
        lab.hosts[host - 1]
            .state
            .join("vms")
            .join(uid)
            .join("qemu.pid"),
    )
    .expect("pid file")
    .trim()
    .parse()
    .expect("pid")
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_routes_by_name_keeps_clusters_apart_and_balances_ingress() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            std::env::var("PADDOCK_TEST_LOG").unwrap_or_else(|_| "paddock_gateway=info".into()),
        )
        .try_init();
    let image = lab::dev_image();
    let s = TestServer::start_with(|c| {
        c.unix_socket = Some(c.data_dir.join("api.sock"));
        c.sans.push(format!("api.{DOMAIN}"));
        c.clusters.base_domain = DOMAIN.into();
        c.clusters.gateway_url = format!("https://{GW_IP}:{GW_PORT}");
    })
    .await;
    let socket = s.data_dir().join("api.sock");
    let mut lab = Lab::new(s.dir.path(), 3);
    let underlay = lab.add_management();
    let s = s.with_controllers(paddock_controllers::Config {
        base_domain: DOMAIN.into(),
        gateway_port: GW_PORT,
        gateway_vtep: Some("10.77.0.2".parse().unwrap()),
        ingress_port_base: 32000,
        initialization_recorded: true,
        ..Default::default()
    });
    let prefix = lab.gateway_prefix();
    let gateway = tokio::spawn(paddock_gateway::run(
        s.client.clone(),
        lab::gateway_config(
            &lab,
            underlay,
            format!("{GW_IP}:{GW_PORT}").parse().unwrap(),
            DOMAIN,
            s.running.as_ref().unwrap().addr,
        ),
    ));
    s.kubectl_ok(&["create", "namespace", "acme"]);
    lab::create_dev_image(&s.client, &image).await;
    lab.agent_args = vec!["--heartbeat-seconds".into(), "1".into()];
    for h in 0..3 {
        lab.start_agent(h, &s, &socket, &image);
    }
    for (name, workers) in [("demo", 2), ("other", 1)] {
        s.apply(&format!(
            r#"
apiVersion: paddock.io/v1alpha1
kind: Cluster
metadata: {{name: {name}, namespace: acme}}
spec:
  controlPlane: {{replicas: 1, cpu: 1, memory: 512Mi, disk: 2Gi}}
  nodePools:
  - {{name: default, replicas: {workers}, cpu: 1, memory: 256Mi, disk: 2Gi}}
"#
        ));
    }
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");
    for name in ["demo", "other"] {
        eventually(240, &format!("{name} Ready"), || async {
            (clusters.get(name).await.ok()?.status?.phase == Some(ClusterPhase::Ready))
                .then_some(())
        })
        .await;
    }
    let dir = s.dir.path().to_owned();
    let write = |name: &str, body: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let demo_ca = write(
        "demo-ca.crt",
        &s.secret_data("acme", "demo-pki", "ca.crt")
            .expect("demo CA"),
    );
    let other_ca = write(
        "other-ca.crt",
        &s.secret_data("acme", "other-pki", "ca.crt")
            .expect("other CA"),
    );
    let demo_name = format!("demo.acme.{DOMAIN}");
    let other_name = format!("other.acme.{DOMAIN}");

    // curl verifies the cluster's API certificate by its name, through the gateway.
    let o = eventually(60, "demo's API through the gateway", || async {
        let o = curl_gateway(&demo_ca, &demo_name);
        if !o.status.success() {
            eprintln!("curl: {}", stderr(&o).trim());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        o.status.success().then_some(o)
    })
    .await;
    assert!(
        stdout(&o).contains("s_server"),
        "fake-kube-apiserver page: {}",
        stdout(&o)
    );
    // ... and it is the certificate Paddock issued to demo's control-plane node.
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let demo_machines = machines_of(&machines, "demo").await;
    let cp = demo_machines
        .iter()
        .find(|m| m.spec.role == MachineRole::ControlPlane)
        .expect("demo cp");
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {GW_IP}:{GW_PORT} -servername {demo_name} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
            demo_ca.display()
        ))
        .output()
        .expect("openssl");
    let ud = s
        .secret_data("acme", &format!("{}-bootstrap", cp.name_any()), "user-data")
        .expect("user-data");
    let issued = write(
        "issued.crt",
        file(&write_files(&ud), "/etc/kubernetes/pki/apiserver.crt"),
    );
    let want = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", issued.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(stdout(&served), stdout(&want), "{}", stderr(&served));
    // The gateway recorded that demo's control plane has initialized (a lost
    // init Machine is replaced by a joining one from now on).
    eventually(10, "demo's status.initialization", || async {
        let i = clusters.get("demo").await.ok()?.status?.initialization?;
        i.control_plane_initialized.then_some(())
    })
    .await;

    // The second cluster's name lands on the second cluster: its CA verifies, demo's does not.
    let o = curl_gateway(&other_ca, &other_name);
    assert!(
        o.status.success(),
        "other through the gateway: {}",
        stderr(&o)
    );
    let o = curl_gateway(&demo_ca, &other_name);
    assert_eq!(
        o.status.code(),
        Some(60),
        "demo's CA must not verify other: {}",
        stderr(&o)
    );
    // A name of no cluster is refused.
    let nope = format!("nope.acme.{DOMAIN}");
    let o = curl_gateway(&demo_ca, &nope);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unrecognized name"), "{}", stderr(&o));
    // The management API under its own name.
    let mgmt = format!("api.{DOMAIN}");
    let o = curl(&[
        "--cacert",
        s.data_dir().join("pki/ca.crt").to_str().unwrap(),
        "--resolve",
        &resolve(&mgmt),
        &format!("https://{mgmt}:{GW_PORT}/healthz"),
    ]);
    assert_eq!(stdout(&o), "ok", "{}", stderr(&o));

    // kubectl with an issued kubeconfig: through the gateway, verified by tls-server-name.
    let kc = dir.join("demo.kubeconfig");
    let o = paddock(
        &s.kubeconfig(),
        &[
            "cluster",
            "kubeconfig",
            "demo",
            "-n",
            "acme",
            "--output-file",
            kc.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kubectl_with(&kc, &["get", "--raw", "/"], None);
    assert!(
        stdout(&o).contains("s_server"),
        "kubectl via the gateway: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // Clusters stay apart: from a demo VM, the gateway answers on demo's
    // overlay, nothing of other's overlay does, even routed via the gateway.
    let other_machines = machines_of(&machines, "other").await;
    let other_cp_ip = other_machines
        .iter()
        .find(|m| m.spec.role == MachineRole::ControlPlane)
        .and_then(|m| m.spec.ip.clone())
        .expect("other cp ip");
    let other_cp_ip = other_cp_ip.split('/').next().unwrap();
    let demo_gw = clusters
        .get("demo")
        .await
        .unwrap()
        .status
        .unwrap()
        .overlay
        .unwrap()
        .gateway;
    let other_gw = clusters
        .get("other")
        .await
        .unwrap()
        .status
        .unwrap()
        .overlay
        .unwrap()
        .gateway;
    let worker = demo_machines
        .iter()
        .find(|m| m.spec.role == MachineRole::Worker)
        .expect("demo worker")
        .name_any();
    let (ok, out) = exec(
        &s,
        &worker,
        &format!("nc -w 5 {demo_gw} 6443 </dev/null && echo connected"),
    );
    assert!(
        ok && out.contains("connected"),
        "demo's API endpoint in its overlay: {out}"
    );
    exec(
        &s,
        &worker,
        &format!("ip route add {other_cp_ip}/32 via {demo_gw}"),
    );
    for target in [other_cp_ip, other_gw.as_str()] {
        let (ok, out) = exec(&s, &worker, &format!("ping -c 2 -W 2 {target}"));
        assert!(!ok, "demo reached {target} of other: {out}");
        let (ok, out) = exec(
            &s,
            &worker,
            &format!("nc -w 3 {target} 6443 </dev/null && echo connected"),
        );
        assert!(
            !ok || !out.contains("connected"),
            "demo reached {target}:6443: {out}"
        );
    }

    // Ingress: the ports, the workers behind them, and HAProxy in front.
    let ing = eventually(
        60,
        "both demo workers healthy behind the ingress",
        || async {
            let ing = clusters.get("demo").await.ok()?.status?.ingress?;
            (ing.address.as_deref() == Some(GW_IP)
                && ing.backends.len() == 2
                && ing.backends.iter().all(|b| b.healthy))
            .then_some(ing)
        },
    )
    .await;
    let table = stdout(&paddock(
        &s.kubeconfig(),
        &["cluster", "ingress", "demo", "-n", "acme"],
    ));
    assert!(
        table.contains(&format!("{GW_IP}:{}", ing.http_port)) && table.contains("up"),
        "{table}"
    );
    let o = paddock(
        &s.kubeconfig(),
        &[
            "cluster",
            "ingress",
            "demo",
            "-n",
            "acme",
            "--haproxy",
            "--bind",
            LB_IP,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = write("haproxy.cfg", &stdout(&o));
    let check = Command::new("haproxy")
        .args(["-c", "-f", cfg.to_str().unwrap()])
        .output()
        .expect("haproxy");
    assert!(
        check.status.success(),
        "haproxy -c: {}{}",
        stdout(&check),
        stderr(&check)
    );
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .args(["-db", "-f", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("log"))
            .spawn()
            .expect("haproxy starts"),
    );
    let lb: SocketAddr = format!("{LB_IP}:{}", ing.http_port).parse().unwrap();
    let get = || {
        let o = curl(&[&format!("http://{lb}/")]);
        o.status.success().then(|| stdout(&o).trim().to_owned())
    };
    let names = |n: usize| -> HashSet<String> { (0..n).filter_map(|_| get()).collect() };
    let seen = eventually(30, "HAProxy reaches both workers", || async {
        let seen = names(8);
        if seen.len() != 2 {
            let direct = curl(&[&format!("http://{GW_IP}:{}/", ing.http_port)]);
            let via = curl(&[&format!("http://{lb}/")]);
            eprintln!(
                "seen {seen:?}; direct: {} {}; via haproxy: {} {}",
                stdout(&direct),
                stderr(&direct),
                stdout(&via),
                stderr(&via)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (seen.len() == 2).then_some(seen)
    })
    .await;
    let workers: Vec<&Machine> = demo_machines
        .iter()
        .filter(|m| m.spec.role == MachineRole::Worker)
        .collect();
    for w in &workers {
        assert!(
            seen.contains(&format!("paddock-dev ingress: {}", w.name_any())),
            "{seen:?}"
        );
    }

    // A worker's VM stops: the health check takes it out, traffic goes to the other.
    let stopped = workers[1];
    let pid = qemu_pid(&lab, stopped);
    signal(pid, "-STOP");
    eventually(30, "the stopped worker marked unhealthy", || async {
        let ing = clusters.get("demo").await.ok()?.status?.ingress?;
        ing.backends
            .iter()
            .any(|b| b.machine == stopped.name_any() && !b.healthy)
            .then_some(())
    })
    .await;
    let after = names(10);
    assert_eq!(
        after,
        HashSet::from([format!("paddock-dev ingress: {}", workers[0].name_any())]),
        "only the running worker answers"
    );
    signal(pid, "-CONT");
    eventually(30, "the worker healthy again", || async {
        let ing = clusters.get("demo").await.ok()?.status?.ingress?;
        ing.backends.iter().all(|b| b.healthy).then_some(())
    })
    .await;

    // Deleting the clusters takes the gateway out of their overlays.
    for name in ["demo", "other"] {
        s.kubectl_ok(&["-n", "acme", "delete", "cluster", name, "--wait=false"]);
    }
    eventually(120, "gateway namespaces removed", || async {
        (paddock_net::netns::list(&prefix).is_empty()
            && clusters
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty())
        .then_some(())
    })
    .await;
    let ports = Command::new("ss").args(["-Htln"]).output().expect("ss");
    assert!(
        !stdout(&ports).contains(&format!("{GW_IP}:{}", ing.http_port)),
        "ingress port still open: {}",
        stdout(&ports)
    );
    gateway.abort();
}
