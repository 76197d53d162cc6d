//! A data center on one machine for end-to-end tests: a fabric bridge in a
//! network namespace of its own, hosts as network namespaces wired to it by
//! veth pairs, an agent per host. Everything is removed on drop, also when
//! the test fails: agents, the QEMU processes they started, namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The dev image, built by the project's script if the cache lacks it.
pub fn dev_image() -> PathBuf {
    let dir = std::env::var_os("PADDOCK_DEV_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/paddock/dev-image"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-dev-image.sh");
    let ok = Command::new(&script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("build-dev-image.sh")
        .success();
    assert!(ok, "building the dev image failed");
    dir
}

pub fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub struct Host {
    pub name: String,
    pub netns: String,
    pub underlay: String,
    pub state: PathBuf,
    pub log: PathBuf,
    pub agent: Option<Child>,
}

pub struct Lab {
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    pub id: String,
    pub fabric: String,
    pub hosts: Vec<Host>,
    pub dir: PathBuf,
}

impl Lab {
    /// A fabric and `n` hosts with underlay addresses 10.77.0.11, .12, ...
    pub fn new(dir: &Path, n: usize) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{:x}{seq}", std::process::id() % 0xffff);
        let fabric = format!("pdt{id}-fab");
        let mut lab = Lab {
            agent_args: Vec::new(),
            id: id.clone(),
            fabric: fabric.clone(),
            hosts: Vec::new(),
            dir: dir.to_owned(),
        };
        sh(&format!("ip netns add {fabric}"));
        sh(&format!(
            "ip -n {fabric} link add fab0 type bridge && ip -n {fabric} link set fab0 up && ip -n {fabric} link set lo up"
        ));
        for i in 1..=n {
            let netns = format!("pdt{id}-h{i}");
            let underlay = format!("10.77.0.{}", 10 + i);
            // Pushed into the hosts' namespaces before anything is up; nothing touches the root namespace.
            lab.hosts.push(Host {
                name: format!("host-{i}"),
                netns: netns.clone(),
                underlay: underlay.clone(),
                state: dir.join(format!("host-{i}")),
                log: dir.join(format!("agent-{i}.log")),
                agent: None,
            });
            sh(&format!("ip netns add {netns}"));
            sh(&format!(
                "ip link add u{id}h{i} netns {netns} type veth peer name f{id}h{i} netns {fabric}"
            ));
            sh(&format!("ip -n {fabric} link set f{id}h{i} master fab0 up"));
            sh(&format!(
                "ip -n {netns} link set lo up && ip -n {netns} link set u{id}h{i} name eth0 && ip -n {netns} addr add {underlay}/24 dev eth0 && ip -n {netns} link set eth0 up"
            ));
        }
        lab
    }

    /// A management-plane namespace on the fabric with underlay address
    /// 10.77.0.2: where a gateway's VXLAN sockets live. Returns its path.
    pub fn add_management(&mut self) -> PathBuf {
        let (id, fabric) = (&self.id, &self.fabric);
        let netns = format!("pdt{id}-mgmt");
        sh(&format!("ip netns add {netns}"));
        sh(&format!(
            "ip link add u{id}m netns {netns} type veth peer name f{id}m netns {fabric}"
        ));
        sh(&format!("ip -n {fabric} link set f{id}m master fab0 up"));
        sh(&format!(
            "ip -n {netns} link set lo up && ip -n {netns} link set u{id}m name eth0 && ip -n {netns} addr add 10.77.0.2/24 dev eth0 && ip -n {netns} link set eth0 up"
        ));
        PathBuf::from("/run/netns").join(netns)
    }

    /// Prefix for a gateway's per-cluster namespaces in this lab.
    pub fn gateway_prefix(&self) -> String {
        format!("pdt{}-gw", self.id)
    }

    /// Starts (or restarts) the agent of host `i` (0-based), with a
    /// credential of that host's own (`paddock add-host`), as in production.
    pub fn start_agent(
        &mut self,
        i: usize,
        server: &super::TestServer,
        api_socket: &Path,
        image: &Path,
    ) {
        let kubeconfig = server.host_kubeconfig(&self.hosts[i].name);
        let h = &mut self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &h.netns,
                env!("CARGO_BIN_EXE_paddock"),
                "agent",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--api-socket")
            .arg(api_socket)
            .args([
                "--name",
                &h.name,
                "--underlay-ip",
                &h.underlay,
                "--stop-grace",
                "1",
            ])
            .arg("--state-dir")
            .arg(&h.state)
            .arg("--probe-kernel")
            .arg(image.join("vmlinuz"))
            .args(&self.agent_args)
            .env("PADDOCK_LOG", "info,paddock_agent=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent starts");
        h.agent = Some(child);
    }

    /// SIGKILLs the agent of host `i`.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A host dies: its agent, its VMs and its network namespace go at once.
    pub fn destroy_host(&mut self, i: usize) {
        self.kill_agent(i);
        let needle = self.hosts[i].state.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let _ = Command::new("kill")
                    .args(["-9", &e.file_name().to_string_lossy()])
                    .status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hosts[i].netns])
            .status();
    }

    pub fn exec(&self, i: usize, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.hosts[i].netns))
    }

    /// QEMU processes started for this lab.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let needle = self.dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.hosts {
                let log = std::fs::read_to_string(&h.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- agent log of {} (last 40 lines) ---", h.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for i in 0..self.hosts.len() {
            self.kill_agent(i);
        }
        for pid in self.qemu_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        let mut extra = vec![format!("pdt{}-mgmt", self.id)];
        extra.extend(paddock_net::netns::list(&self.gateway_prefix()));
        for ns in extra {
            if std::path::Path::new("/run/netns").join(&ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.fabric])
            .status();
    }
}

/// A server with a unix socket for lab hosts, an organization, the dev
/// MachineImage (named "dev"), and a lab of `hosts` hosts.
pub async fn start(hosts: usize, org: &str) -> (super::TestServer, Lab, PathBuf, PathBuf) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let image = dev_image();
    let s =
        super::TestServer::start_with(|c| c.unix_socket = Some(c.data_dir.join("api.sock"))).await;
    let socket = s.data_dir().join("api.sock");
    let lab = Lab::new(s.dir.path(), hosts);
    let mut ns = Namespace::default();
    ns.metadata.name = Some(org.into());
    Api::<Namespace>::all(s.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("org");
    create_dev_image(&s.client, &image).await;
    (s, lab, socket, image)
}

/// The MachineImage "dev": the dev image's kernel and initrd, with digests.
pub async fn create_dev_image(client: &kube::Client, image: &Path) {
    use kube::api::{Api, Patch, PatchParams};
    let (k, i) = (image.join("vmlinuz"), image.join("initrd.img"));
    let spec = serde_json::json!({
        "kernel": {"url": format!("file://{}", k.display()), "sha256": sha256(&k)},
        "initrd": {"url": format!("file://{}", i.display()), "sha256": sha256(&i)},
        "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION,
        "standIn": true,
    });
    // The test server registered it without digests.
    Api::<paddock_api::MachineImage>::all(client.clone())
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": spec})),
        )
        .await
        .expect("the dev MachineImage");
}

/// A gateway for this lab: its VXLAN sockets in the lab's management
/// namespace (see [`Lab::add_management`]), listening on `listen`, with
/// the ingress ports on the same address.
pub fn gateway_config(
    lab: &Lab,
    underlay: PathBuf,
    listen: std::net::SocketAddr,
    base_domain: &str,
    management: std::net::SocketAddr,
) -> paddock_gateway::GatewayConfig {
    paddock_gateway::GatewayConfig {
        listen,
        management_names: vec![format!("api.{base_domain}")],
        management_addr: management,
        base_domain: base_domain.into(),
        vtep: std::net::Ipv4Addr::new(10, 77, 0, 2),
        underlay_netns: Some(underlay),
        netns_prefix: lab.gateway_prefix(),
        overlay_mtu: 1450,
        ingress_bind: listen.ip(),
        ingress_advertise: listen.ip().to_string(),
        health_every: std::time::Duration::from_millis(500),
        resync: std::time::Duration::from_secs(2),
        load_balancer: None,
    }
}

pub async fn create_image(client: &kube::Client, name: &str, spec: serde_json::Value) {
    use kube::api::{Api, PostParams};
    let mi: paddock_api::MachineImage = serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage", "metadata": {"name": name}, "spec": spec
    }))
    .expect("image");
    Api::<paddock_api::MachineImage>::all(client.clone())
        .create(&PostParams::default(), &mi)
        .await
        .expect("image");
}

/// A Cluster with its overlay set as the cluster controller would.
pub async fn cluster_with_overlay(
    client: &kube::Client,
    org: &str,
    name: &str,
    vni: u32,
    subnet: &str,
    gateway: &str,
) {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let api: Api<paddock_api::Cluster> = Api::namespaced(client.clone(), org);
    let spec = serde_json::from_value(serde_json::json!({})).expect("spec");
    api.create(
        &PostParams::default(),
        &paddock_api::Cluster::new(name, spec),
    )
    .await
    .expect("cluster");
    let st = serde_json::json!({"status": {"overlay": {"vni": vni, "subnet": subnet, "gateway": gateway}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&st))
        .await
        .expect("overlay");
}

/// Runs `paddock dev ARGS` (the lab the product ships).
pub fn dev(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .arg("dev")
        .args(args)
        .output()
        .expect("paddock dev runs")
}

/// Removes a `paddock dev up` lab whatever happens to the test.
pub struct Down(pub PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = dev(&["down", "--data-dir", self.0.to_str().unwrap_or_default()]);
    }
}
