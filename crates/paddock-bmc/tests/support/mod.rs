//! Launchers of the independent BMC implementations the drivers are
//! tested against (shared by this crate's tests and the server's): the
//! sushy-tools Redfish emulator and pyghmi's IPMI BMC server, from the
//! project's Python environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paddock_bmc::{Bmc, Credentials, Options, TlsVerify};

/// A tool of the Python environment the project's script makes (or finds cached).
pub fn python_bin(tool: &str) -> PathBuf {
    let python = match std::env::var_os("PADDOCK_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/python-tools.sh");
            let o = Command::new(&script)
                .arg("/var/cache/paddock/python-tools")
                .output()
                .expect("python-tools.sh runs");
            assert!(o.status.success(), "python-tools.sh failed");
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
        }
    };
    python.parent().expect("bin dir").join(tool)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

pub const UUID: &str = "6b0a5e1c-9a1d-4d3e-8c4f-2f3a1b5c7d9e";

/// A running sushy-tools emulator with one fake system, powered off.
pub struct Sushy {
    child: Child,
    pub port: u16,
    pub ca: String,
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sushy {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = paddock_pki::Ca::generate("bmc-test-ca").expect("ca");
        let leaf = ca
            .issue_server("bmc", &["127.0.0.1".into()], Duration::from_secs(3600))
            .expect("leaf");
        let d = dir.path();
        std::fs::write(d.join("tls.crt"), &leaf.cert_pem).expect("cert");
        std::fs::write(d.join("tls.key"), &leaf.key_pem).expect("key");
        // The emulator takes bcrypt entries only; made with its own bcrypt.
        let hash = Command::new(python_bin("python"))
            .args([
                "-c",
                "import bcrypt; print(bcrypt.hashpw(b'r3dfish', bcrypt.gensalt(4)).decode())",
            ])
            .output()
            .expect("bcrypt");
        assert!(hash.status.success());
        std::fs::write(
            d.join("htpasswd"),
            format!("admin:{}", String::from_utf8_lossy(&hash.stdout).trim()),
        )
        .expect("htpasswd");
        let port = free_port();
        std::fs::write(
            d.join("emulator.conf"),
            format!(
                "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
                 SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_SSL_CERT = '{d}/tls.crt'\n\
                 SUSHY_EMULATOR_SSL_KEY = '{d}/tls.key'\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{d}/htpasswd'\n\
                 SUSHY_EMULATOR_STATE_DIR = '{d}/state'\n\
                 SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-0', 'power_state': 'Off', \
                 'nics': [{{'mac': '52:54:00:aa:00:01', 'ip': '10.9.0.2'}}]}}]\n",
                d = d.display()
            ),
        )
        .expect("config");
        let child = Command::new(python_bin("sushy-emulator"))
            .arg("--config")
            .arg(d.join("emulator.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("emulator.log")).expect("log"))
            .spawn()
            .expect("sushy-emulator starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sushy-emulator never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            ca: ca.cert_pem().to_owned(),
            dir: d.to_owned(),
            _dir: dir,
        }
    }

    pub fn address(&self) -> String {
        format!("redfish://127.0.0.1:{}", self.port)
    }

    pub fn driver(&self, password: &str, tls: TlsVerify) -> Box<dyn Bmc> {
        paddock_bmc::connect(
            &self.address(),
            Credentials {
                username: "admin".into(),
                password: password.into(),
            },
            Options {
                timeout: Duration::from_secs(10),
                tls,
            },
        )
        .expect("driver")
    }

    /// How many requests the emulator has logged.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("emulator.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") || l.contains("\"POST ") || l.contains("\"PATCH "))
            .count()
    }

    /// The system as curl reads it.
    pub fn curl_system(&self) -> serde_json::Value {
        let o = Command::new("curl")
            .args(["-sS", "--fail", "-k", "-u", "admin:r3dfish"])
            .arg(format!(
                "https://127.0.0.1:{}/redfish/v1/Systems/{UUID}",
                self.port
            ))
            .output()
            .expect("curl");
        assert!(
            o.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("json")
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct PyghmiBmc {
    child: Child,
    pub port: u16,
}

impl PyghmiBmc {
    pub fn start() -> Self {
        let port = free_udp_port();
        let mut child = Command::new(python_bin("python"))
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../paddock-bmc/tests/python/ipmi_bmc.py"),
            )
            .args(["--port", &port.to_string(), "--password", "1pmi-pass"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the pyghmi BMC starts");
        // It prints once its modules are loaded; the socket follows at once.
        let mut out = child.stdout.take().expect("stdout");
        let mut buf = [0u8; 16];
        let _ = std::io::Read::read(&mut out, &mut buf);
        let s = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.ipmitool("1pmi-pass", &["chassis", "power", "status"]).0 {
            assert!(
                Instant::now() < deadline,
                "the pyghmi BMC never answered ipmitool"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    /// ipmitool over lanplus, cipher suite 3: (succeeded, stdout).
    pub fn ipmitool(&self, password: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-U", "admin"])
            .args([
                "-p",
                &self.port.to_string(),
                "-P",
                password,
                "-R",
                "1",
                "-N",
                "1",
            ])
            .args(args)
            .output()
            .expect("ipmitool runs");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    pub fn power_says(&self) -> String {
        let (ok, out) = self.ipmitool("1pmi-pass", &["chassis", "power", "status"]);
        assert!(ok, "ipmitool chassis power status failed");
        out.trim().to_owned()
    }

    pub fn driver(&self, password: &str) -> Box<dyn Bmc> {
        paddock_bmc::connect(
            &format!("ipmi://127.0.0.1:{}", self.port),
            Credentials {
                username: "admin".into(),
                password: password.into(),
            },
            Options {
                timeout: Duration::from_secs(10),
                ..Options::default()
            },
        )
        .expect("driver")
    }
}

impl Drop for PyghmiBmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
