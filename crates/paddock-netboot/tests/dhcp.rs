//! DHCP answering real clients in network namespaces this test makes and
//! removes:
//! - full mode: ISC `dhclient`, sending what a BIOS PXE ROM sends, is
//!   leased the machine's address and told its boot file; a MAC nobody
//!   registered gets no answer at all;
//! - proxy mode: a QEMU VM's own iPXE ROM, leased its address by a site
//!   DHCP server (busybox `udhcpd`, which knows nothing of PXE), takes the
//!   boot file from Paddock's proxyDHCP, fetches its script over HTTP, then
//!   the kernel and initramfs, and boots them (the dev image, which says so
//!   on its serial console).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_netboot::dhcp::{self, Boot, Config, Dhcp, Mac, Mode, Pool, StaticDirectory};
use paddock_netboot::http::{Http, Script, Scripts};

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Namespaces (and what runs in them) removed when the test ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ip netns pids {ns} 2>/dev/null | xargs -r kill -9; ip netns del {ns}"
                ))
                .status();
        }
    }
}

fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Opens DHCP sockets inside `ns`.
fn bind_in(ns: &str, ports: &[u16]) -> Vec<std::net::UdpSocket> {
    let file = std::fs::File::open(ns_path(ns)).expect("netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            ports
                .iter()
                .map(|p| dhcp::bind(*p, "eth0").expect("bind"))
                .collect()
        })
        .join()
        .expect("thread")
    })
}

fn tcp_in(ns: &str, addr: &str) -> TcpListener {
    let file = std::fs::File::open(ns_path(ns)).expect("netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind(addr).expect("listen")
        })
        .join()
        .expect("thread")
    })
}

const KNOWN: &str = "52:54:00:7e:00:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_leases_registered_macs_only() {
    let tag = std::process::id() % 100_000;
    let (srv, cli) = (format!("pdnb-s{tag}"), format!("pdnb-c{tag}"));
    let _ns = Namespaces(vec![srv.clone(), cli.clone()]);
    sh(&format!(
        "ip netns add {srv} && ip netns add {cli} && \
         ip link add eth0 netns {srv} type veth peer name eth0 netns {cli} && \
         ip -n {srv} addr add 10.99.7.2/24 dev eth0 && ip -n {srv} link set eth0 up && \
         ip -n {cli} link set eth0 address {KNOWN} && ip -n {cli} link set eth0 up"
    ));
    let known: Mac = KNOWN.parse().expect("mac");
    let dir = StaticDirectory(BTreeMap::from([(
        known,
        Some(Ipv4Addr::new(10, 99, 7, 105)),
    )]));
    let cfg = Config {
        server: Ipv4Addr::new(10, 99, 7, 2),
        mode: Mode::Full(Pool {
            first: Ipv4Addr::new(10, 99, 7, 100),
            last: Ipv4Addr::new(10, 99, 7, 120),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 99, 7, 1)),
            dns: vec![],
            lease: Duration::from_secs(600),
        }),
        boot: Boot {
            http_base: "http://10.99.7.2:8080".into(),
            ..Boot::default()
        },
    };
    let _dhcp = Dhcp::start(cfg, dir, bind_in(&srv, &[67])).expect("dhcp");

    let work = tempfile::tempdir().expect("tempdir");
    let conf = work.path().join("dhclient.conf");
    // What a BIOS PXE ROM sends: its class and architecture 0.
    std::fs::write(
        &conf,
        "option pxe-arch code 93 = unsigned integer 16;\n\
         send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n\
         send pxe-arch 0;\n\
         timeout 15;\n",
    )
    .expect("conf");
    // Without -d, dhclient returns once it holds a lease (its daemon
    // stays, until the namespace's processes are killed) or gives up.
    let dhclient = |lease: &Path| {
        let (cli, conf, lease) = (cli.clone(), conf.clone(), lease.to_owned());
        move || {
            Command::new("ip")
                .args(["netns", "exec", &cli, "dhclient", "-1", "-sf", "/bin/true"])
                .arg("-cf")
                .arg(&conf)
                .arg("-lf")
                .arg(&lease)
                .arg("-pf")
                .arg(lease.with_extension("pid"))
                .arg("eth0")
                .output()
                .expect("dhclient")
        }
    };
    let lease = work.path().join("known.lease");
    let out = tokio::task::spawn_blocking(dhclient(&lease))
        .await
        .expect("dhclient");
    let leased = std::fs::read_to_string(&lease).unwrap_or_default();
    assert!(
        out.status.success(),
        "dhclient got no lease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "fixed-address 10.99.7.105;",
        "filename \"undionly.kpxe\";",
        "option subnet-mask 255.255.255.0;",
        "option routers 10.99.7.1;",
        "option dhcp-server-identifier 10.99.7.2;",
        "option dhcp-lease-time 600;",
    ] {
        assert!(leased.contains(want), "{want} not in the lease:\n{leased}");
    }

    // A MAC that is no registered machine's: no offer, dhclient gives up.
    sh(&format!(
        "ip -n {cli} link set eth0 address 52:54:00:7e:00:99"
    ));
    let lease = work.path().join("unknown.lease");
    let out = tokio::task::spawn_blocking(dhclient(&lease))
        .await
        .expect("dhclient");
    let leased = std::fs::read_to_string(&lease).unwrap_or_default();
    assert!(
        !out.status.success() && !leased.contains("fixed-address"),
        "an unknown MAC was answered: {leased}"
    );
}

/// Scripts that boot the dev image, counting who asked.
#[derive(Clone, Default)]
struct DevImageScripts {
    base: String,
    known: Option<Mac>,
    asked: Arc<Mutex<Vec<Mac>>>,
}

impl Scripts for DevImageScripts {
    async fn script(&self, mac: Mac) -> Result<Option<String>, dhcp::DirectoryError> {
        self.asked.lock().expect("lock").push(mac);
        if Some(mac) != self.known {
            return Ok(None);
        }
        Ok(Some(
            Script {
                base: self.base.clone(),
                host: "bm-1".into(),
                join_token: "bm-1.not-a-real-token".into(),
                api: "https://10.99.8.2:6443".into(),
                ca_sha256: "00".into(),
                cmdline: "console=ttyS0".into(),
            }
            .render(),
        ))
    }
}

fn dev_image() -> PathBuf {
    std::env::var_os("PADDOCK_DEV_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/paddock/dev-image"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_boots_a_vm_through_ipxe_beside_the_site_dhcp() {
    let image = dev_image();
    assert!(
        image.join("vmlinuz").exists(),
        "no dev image at {} (scripts/build-dev-image.sh)",
        image.display()
    );
    let tag = std::process::id() % 100_000;
    let (lan, srv, site) = (
        format!("pdnb-l{tag}"),
        format!("pdnb-p{tag}"),
        format!("pdnb-d{tag}"),
    );
    let _ns = Namespaces(vec![lan.clone(), srv.clone(), site.clone()]);
    sh(&format!(
        "ip netns add {lan} && ip netns add {srv} && ip netns add {site} && \
         ip -n {lan} link add br0 type bridge && ip -n {lan} link set br0 up && \
         ip link add eth0 netns {srv} type veth peer name vs netns {lan} && \
         ip link add eth0 netns {site} type veth peer name vd netns {lan} && \
         ip -n {lan} link set vs master br0 up && ip -n {lan} link set vd master br0 up && \
         ip -n {srv} addr add 10.99.8.2/24 dev eth0 && ip -n {srv} link set eth0 up && ip -n {srv} link set lo up && \
         ip -n {site} addr add 10.99.8.1/24 dev eth0 && ip -n {site} link set eth0 up && \
         ip -n {lan} tuntap add tap0 mode tap && ip -n {lan} link set tap0 master br0 up"
    ));
    let work = tempfile::tempdir().expect("tempdir");
    // The site's DHCP server: addresses, no PXE.
    let udhcpd_conf = work.path().join("udhcpd.conf");
    std::fs::write(
        &udhcpd_conf,
        format!(
            "start 10.99.8.50\nend 10.99.8.60\ninterface eth0\nlease_file {}\npidfile {}\noption subnet 255.255.255.0\noption lease 600\n",
            work.path().join("udhcpd.leases").display(),
            work.path().join("udhcpd.pid").display()
        ),
    )
    .expect("conf");
    std::fs::write(work.path().join("udhcpd.leases"), b"").expect("leases");
    let mut udhcpd = Command::new("ip")
        .args(["netns", "exec", &site, "busybox", "udhcpd", "-f"])
        .arg(&udhcpd_conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("udhcpd");

    let vm_mac: Mac = "52:54:00:7e:01:01".parse().expect("mac");
    let scripts = DevImageScripts {
        base: "http://10.99.8.2:8080".into(),
        known: Some(vm_mac),
        asked: Default::default(),
    };
    let http = Http::start(
        tcp_in(&srv, "10.99.8.2:8080"),
        Some(image.clone()),
        "-----BEGIN CERTIFICATE-----\n".into(),
        scripts.clone(),
    )
    .expect("http");
    assert_eq!(http.addr().port(), 8080);
    let cfg = Config {
        server: Ipv4Addr::new(10, 99, 8, 2),
        mode: Mode::Proxy,
        boot: Boot {
            http_base: scripts.base.clone(),
            ..Boot::default()
        },
    };
    let dir = StaticDirectory(BTreeMap::from([(vm_mac, None)]));
    let _dhcp = Dhcp::start(cfg, dir, bind_in(&srv, &[67, dhcp::PXE_PORT])).expect("dhcp");

    // A machine with no disk and no kernel: its NIC's iPXE ROM boots it.
    let console = work.path().join("console.log");
    let mut vm = Command::new("ip")
        .args(["netns", "exec", &lan, "qemu-system-x86_64"])
        .args([
            "-machine", "pc", "-accel", "tcg", "-m", "384", "-display", "none",
        ])
        .args(["-boot", "n", "-no-reboot"])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={vm_mac}")])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu");

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut booted = false;
    while Instant::now() < deadline {
        let out = std::fs::read_to_string(&console).unwrap_or_default();
        if out.contains("paddock-dev: ready") {
            booted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = vm.kill();
    let _ = vm.wait();
    let _ = udhcpd.kill();
    let _ = udhcpd.wait();
    let asked = scripts.asked.lock().expect("lock").clone();
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        asked,
        vec![vm_mac],
        "the VM's iPXE asked for its script once"
    );
    assert!(
        booted,
        "the netbooted kernel did not come up; console:\n{}",
        out.chars()
            .rev()
            .take(3000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
}
