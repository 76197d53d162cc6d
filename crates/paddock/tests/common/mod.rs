//! Test helpers: a real server in-process on a free port, with a kube-rs
//! client and a kubectl that use its admin kubeconfig.
#![allow(dead_code)]

pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Option<paddock_apiserver::Running>,
    pub client: kube::Client,
    /// The etcd cluster the server keeps its objects in, when the suite
    /// runs on etcd ([`test_store_is_etcd`]).
    pub etcd: Option<paddock_etcd::LocalCluster>,
}

/// A `paddock server` of its own process (for the tests that kill, stop
/// and restart it); killed when dropped, also when the test fails.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub data: PathBuf,
    pub kubeconfig: PathBuf,
    client: Option<kube::Client>,
}

impl ServerProcess {
    /// Starts `paddock server` on `data` and 127.0.0.1:<free port> with
    /// the `extra` flags, its log to `log` (else this test's stderr), and
    /// waits until it answers.
    pub async fn spawn(data: &Path, extra: &[String], log: Option<&Path>) -> Self {
        let port = free_port();
        let stderr = match log {
            Some(l) => std::process::Stdio::from(std::fs::File::create(l).expect("log file")),
            None => std::process::Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .arg("server")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("PADDOCK_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("paddock server starts");
        let kubeconfig = data.join("admin.kubeconfig");
        // Owned by the guard from here on: a panic below still kills it.
        let mut server = Self {
            child,
            data: data.to_owned(),
            kubeconfig: kubeconfig.clone(),
            client: None,
        };
        let client = eventually(30, "the server to answer", || {
            let kc = kubeconfig.clone();
            async move {
                // Its own kubeconfig, rewritten for this port at start.
                let text = std::fs::read_to_string(&kc).ok()?;
                if !text.contains(&format!(":{port}\n")) {
                    return None;
                }
                let c = client_for(&kc).await;
                c.apiserver_version().await.ok()?;
                Some(c)
            }
        })
        .await;
        server.client = Some(client);
        server
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone().expect("connected")
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}

/// A simulated agent's host: registered, its Lease taken for an hour, and
/// reported Ready with `cpu` and `memory` of room at `underlay`. Nothing
/// runs on it (benchmarks and control-plane tests).
pub async fn simulated_host(
    client: &kube::Client,
    name: &str,
    underlay: &str,
    cpu: u32,
    memory: &str,
) {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    hosts
        .create(
            &PostParams::default(),
            &paddock_api::Host::new(name, paddock_api::HostSpec::default()),
        )
        .await
        .expect("host");
    // The Lease before the Ready report, as the agent takes them.
    let mut lease = Lease::default();
    lease.metadata.name = Some(format!("host-{name}"));
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(name.to_owned()),
        lease_duration_seconds: Some(3600),
        renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        ..Default::default()
    });
    Api::<Lease>::namespaced(client.clone(), "paddock-system")
        .create(&PostParams::default(), &lease)
        .await
        .expect("host lease");
    let room = serde_json::json!({"cpu": cpu, "memory": memory});
    let st = serde_json::json!({"status": {"phase": "Ready", "underlayIp": underlay,
        "capacity": room, "allocatable": room}});
    hosts
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&st))
        .await
        .expect("host status");
}

/// What the benchmarks create Clusters in: namespace `bench`, and the
/// MachineImage `bench` that their version defaults from.
pub async fn bench_namespace(client: &kube::Client) {
    use kube::api::{Api, PostParams};
    let mi: paddock_api::MachineImage = serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage", "metadata": {"name": "bench"},
        "spec": {"kernel": {"url": "file:///nonexistent/vmlinuz"},
                 "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION, "standIn": true}
    }))
    .expect("image");
    Api::<paddock_api::MachineImage>::all(client.clone())
        .create(&PostParams::default(), &mi)
        .await
        .expect("MachineImage");
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("bench".into());
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("ns");
}

/// A port free on 127.0.0.1 now (for a server process to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether the API suites run on etcd instead of the embedded store:
/// `PADDOCK_TEST_STORE=etcd` (scripts/test.sh runs them both ways).
pub fn test_store_is_etcd() -> bool {
    match std::env::var("PADDOCK_TEST_STORE").as_deref() {
        Ok("etcd") => true,
        Ok("" | "embedded") | Err(_) => false,
        Ok(other) => panic!("PADDOCK_TEST_STORE={other:?}: embedded or etcd"),
    }
}

/// A one-member etcd under `dir` for a server of the test suite.
pub async fn test_etcd(dir: &Path) -> paddock_etcd::LocalCluster {
    paddock_etcd::LocalCluster::start(&dir.join("etcd"), 1)
        .await
        .expect("etcd starts")
}

/// The server's etcd options for `cluster`.
pub fn etcd_options(cluster: &paddock_etcd::LocalCluster) -> paddock_store::EtcdOptions {
    let mut opts = paddock_store::EtcdOptions::new(cluster.endpoints());
    opts.ca_pem = Some(cluster.pki.ca_pem.clone().into_bytes());
    opts.client_cert_pem = Some((
        cluster.pki.client.cert_pem.clone().into_bytes(),
        cluster.pki.client.key_pem.clone().into_bytes(),
    ));
    opts
}

/// The `paddock server` flags that put its store on `cluster`.
pub fn etcd_flags(cluster: &paddock_etcd::LocalCluster) -> Vec<String> {
    vec![
        "--store=etcd".into(),
        format!("--etcd-endpoints={}", cluster.endpoints().join(",")),
        format!("--etcd-ca-file={}", cluster.pki.ca_file.display()),
        format!(
            "--etcd-cert-file={}",
            cluster.pki.client_cert_file.display()
        ),
        format!("--etcd-key-file={}", cluster.pki.client_key_file.display()),
    ]
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut paddock_apiserver::ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = paddock_apiserver::ServerConfig::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().expect("addr"),
        );
        cfg.gc_resync = Duration::from_secs(2);
        let etcd = if test_store_is_etcd() {
            let cluster = test_etcd(dir.path()).await;
            cfg.store = paddock_apiserver::StoreConfig::Etcd(etcd_options(&cluster));
            Some(cluster)
        } else {
            None
        };
        tweak(&mut cfg);
        let running = paddock_apiserver::start(cfg).await.expect("server starts");
        let client = client_for(&running.data.admin_kubeconfig()).await;
        register_stand_in_image(&client).await;
        Self {
            dir,
            running: Some(running),
            client,
            etcd,
        }
    }

    /// Also runs the controllers, in-process and supervised, as `paddock
    /// server` does.
    pub fn with_controllers(self, cfg: paddock_controllers::Config) -> Self {
        let running = self.running.as_ref().expect("running");
        let client = running.controllers.clone();
        running
            .spawn_leader_loops(move |_| paddock_controllers::loops(client.clone(), cfg.clone()));
        self
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.running
            .as_ref()
            .expect("running")
            .data
            .admin_kubeconfig()
    }

    /// The kubeconfig of host `host`'s agent (`paddock add-host`), issued
    /// on first use.
    pub fn host_kubeconfig(&self, host: &str) -> PathBuf {
        let path = self.dir.path().join(format!("host-{host}.kubeconfig"));
        if !path.exists() {
            let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
                .args(["add-host", host, "--output-file"])
                .arg(&path)
                .arg("--data-dir")
                .arg(self.data_dir())
                .output()
                .expect("paddock add-host runs");
            assert!(out.status.success(), "paddock add-host: {}", stderr(&out));
        }
        path
    }

    /// Every file the store keeps its objects in: the embedded store's, or
    /// those of the etcd members (database and write-ahead log).
    pub fn store_files(&self) -> Vec<PathBuf> {
        let roots = match &self.etcd {
            Some(etcd) => etcd.members().iter().map(|m| m.data_dir()).collect(),
            None => vec![self.data_dir().join("store")],
        };
        let mut files = Vec::new();
        let mut dirs = roots;
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read store dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files
    }

    pub fn url(&self) -> String {
        self.running.as_ref().expect("running").data.url.clone()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One key of a Secret, decoded, or None if the Secret or key is missing.
    pub fn secret_data(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        let o = self.kubectl(&[
            "-n",
            ns,
            "get",
            "secret",
            name,
            "-o",
            &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
        ]);
        if !o.status.success() || stdout(&o).is_empty() {
            return None;
        }
        String::from_utf8(b64(&stdout(&o))).ok()
    }

    /// `kubectl -n NS get WHAT -o jsonpath=PATH` (WHAT as `cluster/demo`);
    /// empty if it fails.
    pub fn field(&self, ns: &str, what: &str, path: &str) -> String {
        let o = self.kubectl(&["-n", ns, "get", what, "-o", &format!("jsonpath={path}")]);
        stdout(&o).trim().to_owned()
    }

    /// Runs kubectl against this server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_with(&self.kubeconfig(), args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        kubectl_with(&self.kubeconfig(), args, Some(stdin))
    }

    /// Runs kubectl and insists that it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

/// Runs the `paddock` CLI with `kubeconfig`.
pub fn paddock(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("paddock runs")
}

/// Runs the `paddock` CLI and insists that it succeeds; returns stdout.
pub fn paddock_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = paddock(kubeconfig, args);
    assert!(
        out.status.success(),
        "paddock {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", kubeconfig.with_file_name("kubecache"))
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl is installed");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl runs")
}

/// `paddock machine exec VM -n ORG -- /bin/sh -c CMD` as the admin: whether
/// the command succeeded, and what it printed.
pub fn machine_exec(
    s: &TestServer,
    org: &str,
    vm: &str,
    timeout_s: u32,
    cmd: &str,
) -> (bool, String) {
    machine_exec_as(&s.kubeconfig(), org, vm, timeout_s, cmd)
}

/// [`machine_exec`] with a kubeconfig, for a thread of its own.
pub fn machine_exec_as(
    kubeconfig: &std::path::Path,
    org: &str,
    vm: &str,
    timeout_s: u32,
    cmd: &str,
) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "machine",
            "exec",
            vm,
            "-n",
            org,
            "--timeout",
            &timeout_s.to_string(),
            "--",
        ])
        .args(["/bin/sh", "-c", cmd])
        .output()
        .expect("paddock machine exec");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// Decodes standard base64, ignoring whitespace.
pub fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.split_whitespace().collect::<String>())
        .expect("base64")
}

/// The files a cloud-init user-data's `write_files` would write: (path, content).
pub fn write_files(user_data: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_saphyr::from_str(user_data).expect("user-data is YAML");
    v["write_files"]
        .as_array()
        .expect("write_files")
        .iter()
        .map(|f| {
            let content = f["content"].as_str().expect("content");
            assert_eq!(f["encoding"], "b64");
            (
                f["path"].as_str().expect("path").to_owned(),
                String::from_utf8(b64(content)).expect("utf-8"),
            )
        })
        .collect()
}

/// The content `write_files` gives `path`.
pub fn file<'a>(files: &'a [(String, String)], path: &str) -> &'a str {
    &files
        .iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{path} not in write_files"))
        .1
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            // Where a slow test spends its time (seen with --nocapture).
            let took = start.elapsed();
            if took >= Duration::from_secs(5) {
                eprintln!("waited {}s for {what}", took.as_secs());
            }
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const CLUSTER_YAML: &str = r#"
apiVersion: paddock.io/v1alpha1
kind: Cluster
metadata: {name: demo, namespace: acme}
spec:
  kubernetesVersion: "1.31.2"
  controlPlane: {replicas: 1, cpu: 1, memory: 1Gi, disk: 10Gi}
  nodePools:
  - {name: default, replicas: 2, cpu: 2, memory: 2Gi, disk: 20Gi}
"#;

pub const ACME_YAML: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: acme}\n";

/// Whether the overlay of VNI `vni` is claimed (its Lease exists).
pub async fn overlay_claimed(s: &TestServer, vni: u32) -> bool {
    kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        s.client.clone(),
        "paddock-system",
    )
    .get_opt(&format!("overlay-{vni}"))
    .await
    .expect("get lease")
    .is_some()
}

/// Every test server starts with the MachineImage "dev": the dev image
/// (stand-ins for kubeadm and the API server) at the version it registers
/// as, so that Clusters can be created. Tests that boot it add its digests
/// ([`lab::create_dev_image`]).
pub async fn register_stand_in_image(client: &kube::Client) {
    use kube::api::{Api, PostParams};
    let dir = std::env::var_os("PADDOCK_DEV_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/paddock/dev-image"));
    let mi: paddock_api::MachineImage = serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage", "metadata": {"name": "dev"},
        "spec": {
            "kernel": {"url": format!("file://{}", dir.join("vmlinuz").display())},
            "initrd": {"url": format!("file://{}", dir.join("initrd.img").display())},
            "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION,
            "standIn": true,
        }
    }))
    .expect("image");
    Api::<paddock_api::MachineImage>::all(client.clone())
        .create(&PostParams::default(), &mi)
        .await
        .expect("the dev MachineImage");
}

/// The bearer token in a kubeconfig.
pub fn token_of(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|t| t.trim().to_owned())
        .expect("a token in the kubeconfig")
}
