//! `paddock dev up|down`: a whole lab on one machine. The server, N hosts —
//! network namespaces on a fabric bridge in a namespace of its own, each
//! with its agent — and the dev node image, all started in the background.
//! Both commands are idempotent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

pub const FABRIC: &str = "paddock-fabric";
/// The management plane's namespace on the fabric, and its underlay address.
const MGMT: &str = "paddock-mgmt";
const MGMT_IP: &str = "10.77.0.2";
/// Where the lab's gateway listens (on loopback).
pub const GATEWAY_PORT: u16 = 16443;
const IMAGE_SCRIPT: &str = include_str!("../../../scripts/build-dev-image.sh");
const HOST_IMAGE_SCRIPT: &str = include_str!("../../../scripts/build-host-image.sh");
/// Where the lab's virtual BMC listens (Redfish, on loopback).
pub const BMC_PORT: u16 = 16623;
/// The range the lab's DHCP leases bare-metal machines on the fabric.
const DHCP_RANGE: &str = "10.77.0.100-10.77.0.199";

fn host_ns(i: usize) -> String {
    format!("paddock-host{i}")
}

fn sh(cmd: &str) -> anyhow::Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn alive(pidfile: &Path) -> bool {
    std::fs::read_to_string(pidfile)
        .ok()
        .is_some_and(|p| running(p.trim()))
}

/// Starts `args` detached from this process (own session), logging to `log`.
fn spawn_detached(args: &[String], log: &Path, pidfile: &Path) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("log {}", log.display()))?;
    let child = Command::new("setsid")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", args.first().map_or("", String::as_str)))?;
    std::fs::write(pidfile, child.id().to_string())?;
    Ok(())
}

/// Whether process `pid` runs (a zombie waiting for its parent does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub struct Up {
    pub hosts: usize,
    pub data_dir: PathBuf,
    pub image_dir: PathBuf,
    pub kube_image: Option<PathBuf>,
    /// Three servers on a three-member etcd behind HAProxy, instead of one
    /// server on the embedded store.
    pub ha: bool,
    /// Bare-metal machines behind the lab's virtual BMC.
    pub bare_metal: usize,
    pub bare_metal_memory: u32,
    /// Debian's Prometheus on [`PROMETHEUS_ADDR`], scraping the lab.
    pub monitoring: bool,
}

/// Where the lab's Prometheus listens (loopback).
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:19090";

/// Servers of the HA lab: each listens on its own port; HAProxy listens on
/// the one server's usual places (127.0.0.1:6443 and `api.sock`).
const HA_SERVERS: usize = 3;
const HA_FIRST_PORT: u16 = 16450;
const HA_PORT: u16 = 6443;

/// The data directory of server `i` of the lab (the first is where the
/// single-server lab keeps its own).
fn server_dir(d: &Path, i: usize) -> PathBuf {
    if i == 0 {
        d.join("server")
    } else {
        d.join(format!("server-{i}"))
    }
}

/// HAProxy in front of the lab's servers: TLS passes through (each server
/// has a certificate from the same CA for 127.0.0.1), and a server leaves
/// the rotation when its `/readyz` fails, checked over TLS against that CA.
pub fn haproxy_api_config(d: &Path, ca: &Path, servers: &[u16]) -> String {
    let mut cfg = format!(
        "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend paddock-api\n  bind 127.0.0.1:{HA_PORT}\n  bind unix@{sock} mode 666\n  default_backend paddock-servers\n\n\
         backend paddock-servers\n  option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 default-server check check-ssl verify required ca-file {ca} inter 1s fall 2 rise 1\n",
        sock = d.join("api.sock").display(),
        ca = ca.display(),
    );
    for (i, port) in servers.iter().enumerate() {
        cfg.push_str(&format!("  server s{i} 127.0.0.1:{port}\n"));
    }
    cfg
}

/// The lab's etcd (three members, detached) and servers on it, with
/// HAProxy in front. Returns the server args shared by all.
async fn up_ha(exe: &str, d: &Path, gateway_args: &[String]) -> anyhow::Result<()> {
    let etcd_dir = d.join("etcd");
    let layout = paddock_etcd::Layout::create_or_load(&etcd_dir, 3)?;
    let binary = paddock_etcd::find_binary()?;
    for i in 0..layout.members.len() {
        let pidfile = d.join(format!("etcd-{i}.pid"));
        if !alive(&pidfile) {
            spawn_detached(
                &layout.args(i, &binary)?,
                &layout.members[i].log(),
                &pidfile,
            )?;
        }
    }
    let all: Vec<usize> = (0..layout.members.len()).collect();
    layout.wait_healthy(&all, Duration::from_secs(60)).await?;
    let store = [
        "--store=etcd".to_owned(),
        format!("--etcd-endpoints={}", layout.endpoints().join(",")),
        format!("--etcd-ca-file={}", layout.pki.ca_file.display()),
        format!("--etcd-cert-file={}", layout.pki.client_cert_file.display()),
        format!("--etcd-key-file={}", layout.pki.client_key_file.display()),
    ];
    let ports: Vec<u16> = (0..HA_SERVERS)
        .map(|i| HA_FIRST_PORT + u16::try_from(i).unwrap_or(0))
        .collect();
    for (i, port) in ports.iter().enumerate() {
        let dir = server_dir(d, i);
        if i > 0 && !dir.join("tokens.json").exists() {
            // Every replica shares the first one's CA, tokens and sealing key.
            paddock_apiserver::bootstrap::share(&server_dir(d, 0), &dir)
                .with_context(|| format!("sharing the first server's files with server {i}"))?;
        }
        let pidfile = d.join(format!("server-{i}.pid"));
        if !alive(&pidfile) {
            let mut args: Vec<String> = vec![
                exe.to_owned(),
                "server".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--leader-identity".into(),
                format!("server-{i}"),
                "--host-grace-seconds".into(),
                "30".into(),
            ];
            args.extend(store.iter().cloned());
            // The gateway runs on the leader, whichever it is: on one
            // machine every server can take the same addresses.
            args.extend(gateway_args.iter().cloned());
            spawn_detached(&args, &d.join(format!("server-{i}.log")), &pidfile)?;
        }
        if i == 0 {
            wait_for_file(&dir.join("tokens.json"), d, "server-0.log").await?;
        }
    }
    let cfg = haproxy_api_config(d, &server_dir(d, 0).join("pki/ca.crt"), &ports);
    std::fs::write(d.join("haproxy-api.cfg"), cfg)?;
    let pidfile = d.join("haproxy-api.pid");
    if !alive(&pidfile) {
        if Command::new("haproxy").arg("-v").output().is_err() {
            bail!(
                "`paddock dev up --ha` runs HAProxy in front of the servers: install it (apt-get install haproxy)"
            );
        }
        let _ = std::fs::remove_file(d.join("api.sock"));
        let args = vec![
            "haproxy".to_owned(),
            "-db".into(),
            "-f".into(),
            d.join("haproxy-api.cfg").display().to_string(),
        ];
        spawn_detached(&args, &d.join("haproxy-api.log"), &pidfile)?;
    }
    // The admin kubeconfig names HAProxy's address, not one server's.
    let first = std::fs::read_to_string(server_dir(d, 0).join("admin.kubeconfig"))?;
    let through = first.replace(
        &format!("https://127.0.0.1:{}", ports[0]),
        &format!("https://127.0.0.1:{HA_PORT}"),
    );
    paddock_apiserver::bootstrap::write_private(&d.join("admin.kubeconfig"), through.as_bytes())?;
    Ok(())
}

/// Gives every server of the HA lab the first one's token file (each
/// re-reads its own when it changes), after a credential was added there.
fn share_tokens(d: &Path) -> anyhow::Result<()> {
    let tokens = std::fs::read(server_dir(d, 0).join("tokens.json"))?;
    for i in 1..HA_SERVERS {
        // Written aside and renamed: a server never reads half a file.
        paddock_apiserver::bootstrap::write_private(
            &server_dir(d, i).join("tokens.json"),
            &tokens,
        )?;
    }
    Ok(())
}

async fn wait_for_file(path: &Path, d: &Path, log: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} was not written; see {}",
                path.display(),
                d.join(log).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The MachineImage of a Kubernetes node image directory (kernel, initrd,
/// root disk and `KUBERNETES_VERSION`, as scripts/build-kube-node-image.sh
/// writes it): named `kube-<version>`, with the least its nodes need
/// (kubeadm's preflight wants 2 vCPUs and 1700 MB on a control plane).
pub fn kube_node_image(dir: &Path) -> anyhow::Result<paddock_api::MachineImage> {
    let version = std::fs::read_to_string(dir.join("KUBERNETES_VERSION"))
        .with_context(|| format!("{} is not a Kubernetes node image", dir.display()))?;
    let version = version.trim().trim_start_matches('v').to_owned();
    let url = |f: &str| format!("file://{}", dir.join(f).display());
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage",
        "metadata": {"name": format!("kube-{version}")},
        "spec": {
            "kernel": {"url": url("vmlinuz")},
            "initrd": {"url": url("initrd.img")},
            "disk": {"url": url("rootfs.qcow2"), "format": "qcow2"},
            "cmdline": "root=/dev/vda rw",
            "kubernetesVersion": version,
            "minimum": {"controlPlane": {"cpu": 2, "memory": "2Gi"}, "worker": {"cpu": 1, "memory": "1Gi"}},
        }
    }))?)
}

pub async fn up(u: Up) -> anyhow::Result<()> {
    if u.ha && u.bare_metal > 0 {
        bail!(
            "--bare-metal needs the single-server lab (not --ha): its netboot services run on the one server"
        );
    }
    let exe = std::env::current_exe().context("finding the paddock binary")?;
    let exe = exe.display().to_string();
    let d = &u.data_dir;
    std::fs::create_dir_all(d)?;
    let socket = d.join("api.sock");
    let kubeconfig = if u.ha {
        d.join("admin.kubeconfig")
    } else {
        d.join("server/admin.kubeconfig")
    };

    eprintln!("• dev node image");
    let script = d.join("build-dev-image.sh");
    std::fs::write(&script, IMAGE_SCRIPT)?;
    let st = Command::new("bash")
        .arg(&script)
        .arg(&u.image_dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("building the dev image failed");
    }

    // The fabric, and the management plane's place on it (10.77.0.2), where
    // the gateway's VXLAN sockets live.
    if !netns_exists(FABRIC) {
        sh(&format!(
            "ip netns add {FABRIC} && ip -n {FABRIC} link add fabric0 type bridge && ip -n {FABRIC} link set fabric0 up"
        ))?;
    }
    if !netns_exists(MGMT) {
        sh(&format!(
            "ip netns add {MGMT} && ip link add pdm0 netns {MGMT} type veth peer name pdfm netns {FABRIC} && \
             ip -n {FABRIC} link set pdfm master fabric0 up && ip -n {MGMT} link set lo up && \
             ip -n {MGMT} link set pdm0 name eth0 && ip -n {MGMT} addr add {MGMT_IP}/24 dev eth0 && ip -n {MGMT} link set eth0 up"
        ))?;
    }

    eprintln!("• management plane");
    let gateway_args: Vec<String> = vec![
        "--gateway-listen".into(),
        format!("127.0.0.1:{GATEWAY_PORT}"),
        "--gateway-vtep".into(),
        MGMT_IP.into(),
        "--gateway-underlay-netns".into(),
        MGMT.into(),
        "--ingress-bind".into(),
        "127.0.0.1".into(),
        "--haproxy-config".into(),
        d.join("haproxy.cfg").display().to_string(),
        // Beside the gateway's ports on 127.0.0.1, not on top of them.
        "--haproxy-bind".into(),
        "127.0.0.2".into(),
    ];
    if u.ha {
        eprintln!("• etcd (3 members), 3 servers, HAProxy in front");
        up_ha(&exe, d, &gateway_args).await?;
    } else if !alive(&d.join("server.pid")) {
        let mut args: Vec<String> = vec![
            exe.clone(),
            "server".into(),
            "--data-dir".into(),
            d.join("server").display().to_string(),
            "--unix-socket".into(),
            socket.display().to_string(),
            "--host-grace-seconds".into(),
            "30".into(),
            // Netboot on the fabric (only registered MACs are answered).
            "--netboot-address".into(),
            MGMT_IP.into(),
            "--netboot-interface".into(),
            "eth0".into(),
            "--netboot-netns".into(),
            MGMT.into(),
            "--dhcp-range".into(),
            DHCP_RANGE.into(),
            "--netboot-image".into(),
            d.join("host-image").display().to_string(),
        ];
        args.extend(gateway_args);
        spawn_detached(&args, &d.join("server.log"), &d.join("server.pid"))?;
    }
    let client = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(kc) = kube::config::Kubeconfig::read_from(&kubeconfig)
                && let Ok(cfg) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
                && let Ok(c) = kube::Client::try_from(cfg)
                && c.apiserver_version().await.is_ok()
            {
                break c;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the server did not answer; see {}",
                    d.join("server.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (k, i) = (u.image_dir.join("vmlinuz"), u.image_dir.join("initrd.img"));
    let images: Api<paddock_api::MachineImage> = Api::all(client.clone());
    if images.get_opt("dev").await?.is_none() {
        let mi: paddock_api::MachineImage = serde_json::from_value(serde_json::json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage", "metadata": {"name": "dev"},
            "spec": {"kernel": {"url": format!("file://{}", k.display())}, "initrd": {"url": format!("file://{}", i.display())},
                     "kubernetesVersion": paddock_api::version::DEV_IMAGE_VERSION, "standIn": true}
        }))?;
        images.create(&PostParams::default(), &mi).await?;
    }
    if let Some(dir) = &u.kube_image {
        let mi = kube_node_image(dir)?;
        if images.get_opt(&mi.name_any()).await?.is_none() {
            images.create(&PostParams::default(), &mi).await?;
        }
        eprintln!("• MachineImage {} registered", mi.name_any());
    }

    eprintln!("• {} hosts", u.hosts);
    for n in 1..=u.hosts {
        let ns = host_ns(n);
        let ip = format!("10.77.0.{}", 10 + n);
        if !netns_exists(&ns) {
            sh(&format!(
                "ip netns add {ns} && ip link add pdh{n} netns {ns} type veth peer name pdf{n} netns {FABRIC} && \
                 ip -n {FABRIC} link set pdf{n} master fabric0 up && ip -n {ns} link set lo up && \
                 ip -n {ns} link set pdh{n} name eth0 && ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up"
            ))?;
        }
        // Each agent holds a credential for its own host only.
        let host_kubeconfig = d.join(format!("host-{n}.kubeconfig"));
        if !host_kubeconfig.exists() {
            let kc =
                paddock_apiserver::bootstrap::add_host(&d.join("server"), &format!("host-{n}"))
                    .context("issuing the host's credential")?;
            paddock_apiserver::bootstrap::write_private(&host_kubeconfig, kc.as_bytes())?;
            if u.ha {
                share_tokens(d)?;
            }
        }
        let pidfile = d.join(format!("agent-{n}.pid"));
        if !alive(&pidfile) {
            let args: Vec<String> = [
                "ip",
                "netns",
                "exec",
                &ns,
                &exe,
                "agent",
                "--api-socket",
                &socket.display().to_string(),
                "--kubeconfig",
                &host_kubeconfig.display().to_string(),
                "--name",
                &format!("host-{n}"),
                "--underlay-ip",
                &ip,
                "--state-dir",
                &d.join(format!("hosts/host-{n}")).display().to_string(),
                "--probe-kernel",
                &k.display().to_string(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            spawn_detached(&args, &d.join(format!("agent-{n}.log")), &pidfile)?;
        }
    }
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ready = hosts
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|h| {
                h.status.as_ref().and_then(|s| s.phase) == Some(paddock_api::HostPhase::Ready)
            })
            .count();
        if ready >= u.hosts {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {ready} of {} hosts Ready; see {}/agent-*.log",
                u.hosts,
                d.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if u.bare_metal > 0 {
        bare_metal(&u, &exe, &kubeconfig, &hosts).await?;
    }
    if u.monitoring {
        prometheus(d, &kubeconfig).await?;
    }
    println!(
        "Paddock lab is up: {} hosts, logs in {dir}.\n\nNext:\n  export KUBECONFIG={kc}\n  paddock cluster create demo --workers 2 --wait\n  paddock cluster list\n  kubectl get clusters,machines -A\n  paddock dev down",
        u.hosts,
        dir = d.display(),
        kc = kubeconfig.display()
    );
    Ok(())
}

/// The lab's Prometheus: the shipped rules and a configuration for this lab
/// (scraping every 5 s) in `<data-dir>/prometheus`, a user of group
/// `system:monitoring` for it, and Debian's `prometheus` on
/// [`PROMETHEUS_ADDR`]. Idempotent.
async fn prometheus(d: &Path, admin_kubeconfig: &Path) -> anyhow::Result<()> {
    let server_dir = admin_kubeconfig
        .parent()
        .context("the admin kubeconfig's directory")?;
    let dir = d.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    if !token_file.exists() {
        let kc = paddock_apiserver::bootstrap::add_user(
            server_dir,
            "prometheus",
            &[paddock_apiserver::metrics::MONITORING_GROUP.to_owned()],
        )?;
        let token = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("token:"))
            .map(str::trim)
            .context("the monitoring user's kubeconfig has no token")?;
        std::fs::write(&token_file, token)?;
    }
    let config = crate::monitoring::write(
        &dir,
        vec!["127.0.0.1:6443".into()],
        server_dir.join("pki/ca.crt"),
        token_file,
        5,
    )?;
    let pidfile = d.join("prometheus.pid");
    if !alive(&pidfile) {
        eprintln!("• Prometheus on http://{PROMETHEUS_ADDR}");
        let args: Vec<String> = vec![
            "prometheus".into(),
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={PROMETHEUS_ADDR}"),
            "--storage.tsdb.retention.time=2d".into(),
        ];
        spawn_detached(&args, &d.join("prometheus.log"), &pidfile)?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !prometheus_ready().await {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "Prometheus is not ready after 60 s; see {}",
                d.join("prometheus.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Whether the lab's Prometheus answers `/-/ready` with 200.
async fn prometheus_ready() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(PROMETHEUS_ADDR).await else {
        return false;
    };
    if s.write_all(b"GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.0 200") || buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// The lab's bare-metal machines: the host image, a tap and a blank disk
/// each, the virtual BMC, and their Hosts (registered with `paddock host
/// add`, as an operator would). Idempotent.
async fn bare_metal(
    u: &Up,
    exe: &str,
    kubeconfig: &Path,
    hosts: &Api<paddock_api::Host>,
) -> anyhow::Result<()> {
    let d = &u.data_dir;
    eprintln!("• host image (netbooted by the bare-metal machines)");
    let script = d.join("build-host-image.sh");
    std::fs::write(&script, HOST_IMAGE_SCRIPT)?;
    let st = Command::new("bash")
        .arg(&script)
        .arg(exe)
        .arg(d.join("host-image"))
        .arg(&u.image_dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("building the host image failed");
    }
    eprintln!(
        "• {} bare-metal machines behind the lab's BMC",
        u.bare_metal
    );
    let dir = d.join("bare-metal");
    std::fs::create_dir_all(&dir)?;
    let machines = crate::labbmc::machines(d, u.bare_metal);
    for m in &machines {
        if !Path::new(&format!("/proc/sys/net/ipv4/conf/{}", m.tap)).exists()
            && Command::new("ip")
                .args(["-n", FABRIC, "link", "show", &m.tap])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        {
            sh(&format!(
                "ip -n {FABRIC} tuntap add {tap} mode tap && ip -n {FABRIC} link set {tap} master fabric0 up",
                tap = m.tap
            ))?;
        }
        if !m.disk.exists() {
            std::fs::File::create(&m.disk)?.set_len(8 << 30)?;
        }
    }
    let password = dir.join("bmc-password");
    if !password.exists() {
        let p: [u8; 16] = rand::random();
        let p: String = p.iter().map(|b| format!("{b:02x}")).collect();
        paddock_apiserver::bootstrap::write_private(&password, p.as_bytes())?;
    }
    let pidfile = d.join("bmc.pid");
    if !alive(&pidfile) {
        let args: Vec<String> = [
            exe,
            "dev",
            "bmc",
            "--data-dir",
            &d.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{BMC_PORT}"),
            "--machines",
            &u.bare_metal.to_string(),
            "--memory",
            &u.bare_metal_memory.to_string(),
            "--password-file",
            &password.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        spawn_detached(&args, &d.join("bmc.log"), &pidfile)?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", BMC_PORT))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the lab's BMC did not start; see {}",
                d.join("bmc.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &machines {
        if hosts.get_opt(&m.name).await?.is_some() {
            continue;
        }
        let out = Command::new(exe)
            .args(["host", "add", &m.name])
            .args([
                "--bmc",
                &format!(
                    "redfish+http://127.0.0.1:{BMC_PORT}/redfish/v1/Systems/{}",
                    m.name
                ),
                "--mac",
                &m.mac,
                "--username",
                "admin",
            ])
            .arg("--password-file")
            .arg(&password)
            .env("PADDOCK_KUBECONFIG", kubeconfig)
            .output()?;
        if !out.status.success() {
            bail!(
                "registering {}: {}",
                m.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    eprintln!(
        "• bare-metal machines registered: they power on, netboot and join (watch: paddock host list; consoles in {})",
        dir.display()
    );
    Ok(())
}

pub fn down(data_dir: &Path) -> anyhow::Result<()> {
    // SIGTERM, then wait for the process to be gone (SIGKILL after a grace
    // period): `down` returns only once nothing of the lab runs.
    let kill = |pidfile: &Path| {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let pid = pid.to_string();
            let gone = || !running(&pid);
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !gone() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !gone() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        let _ = std::fs::remove_file(pidfile);
    };
    if let Ok(rd) = std::fs::read_dir(data_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("agent-") && name.ends_with(".pid") {
                kill(&e.path());
            }
        }
    }
    // VMs outlive agents by design: stop the lab's QEMUs by their directory.
    let needle = data_dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            let _ = Command::new("kill")
                .args(["-9", &e.file_name().to_string_lossy()])
                .status();
        }
    }
    // The servers, HAProxy and etcd members (of the HA lab): every pid file left.
    if let Ok(rd) = std::fs::read_dir(data_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".pid") {
                kill(&e.path());
            }
        }
    }
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == FABRIC
            || name == MGMT
            || name.starts_with("paddock-host")
            || name.starts_with("paddock-gw-")
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    if data_dir.exists() {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    }
    println!("Paddock lab removed.");
    Ok(())
}
