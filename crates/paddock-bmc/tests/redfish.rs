//! The Redfish driver against an independent Redfish service: the
//! `sushy-tools` emulator from PyPI (its fake driver: a system with no VM
//! behind it), over HTTPS with HTTP Basic (the emulator has no session
//! service, so the driver falls back to Basic as it must), read back with
//! curl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paddock_bmc::{
    Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState, TlsVerify,
};

const UUID: &str = "6b0a5e1c-9a1d-4d3e-8c4f-2f3a1b5c7d9e";

/// The environment the project's script makes (or finds cached).
fn python_bin(tool: &str) -> PathBuf {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running sushy-tools emulator with one fake system, powered off.
struct Sushy {
    child: Child,
    port: u16,
    ca: String,
    _dir: tempfile::TempDir,
}

impl Sushy {
    fn start() -> Self {
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
            _dir: dir,
        }
    }

    fn address(&self) -> String {
        format!("redfish://127.0.0.1:{}", self.port)
    }

    fn driver(&self, password: &str, tls: TlsVerify) -> Box<dyn Bmc> {
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

    /// The system as curl reads it.
    fn curl_system(&self) -> serde_json::Value {
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

/// The emulator applies a power change 1 to 11 s after it is asked.
async fn wait_power(b: &dyn Bmc, want: PowerState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = b.power_state().await.expect("power state");
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "power stayed {now}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn drives_power_and_boot_of_an_independent_redfish_service() {
    let s = Sushy::start();
    let b = s.driver("r3dfish", TlsVerify::Ca(s.ca.clone().into_bytes()));
    assert_eq!(b.power_state().await.expect("state"), PowerState::Off);

    b.boot_once(BootDevice::Pxe)
        .await
        .expect("boot once from PXE");
    assert_eq!(s.curl_system()["Boot"]["BootSourceOverrideTarget"], "Pxe");

    b.power(PowerAction::On).await.expect("on");
    wait_power(b.as_ref(), PowerState::On).await;
    assert_eq!(s.curl_system()["PowerState"], "On");
    // On again is nothing to do, not an error.
    b.power(PowerAction::On).await.expect("on again");

    // The emulator has no PowerCycle: the driver restarts instead.
    b.power(PowerAction::Cycle).await.expect("cycle");
    b.power(PowerAction::Off).await.expect("off");
    wait_power(b.as_ref(), PowerState::Off).await;
    assert_eq!(s.curl_system()["PowerState"], "Off");
    b.power(PowerAction::Off).await.expect("off again");
    b.close().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_clearly_and_not_retried() {
    let s = Sushy::start();
    let b = s.driver("wrong", TlsVerify::Ca(s.ca.clone().into_bytes()));
    let e = b.power_state().await.expect_err("refused");
    assert!(matches!(e, BmcError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("admin"), "{e}");
    let e = b.power(PowerAction::On).await.expect_err("refused");
    assert!(matches!(e, BmcError::Unauthorized { .. }), "{e:?}");
    // Nothing was done.
    assert_eq!(s.curl_system()["PowerState"], "Off");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_told_otherwise() {
    let s = Sushy::start();
    let other = paddock_pki::Ca::generate("someone-else").expect("ca");
    let b = s.driver(
        "r3dfish",
        TlsVerify::Ca(other.cert_pem().as_bytes().to_vec()),
    );
    let e = b.power_state().await.expect_err("untrusted");
    assert!(matches!(e, BmcError::Tls(_)), "{e:?}");
    assert!(!e.is_retryable());
    // The system's roots do not have this lab CA either.
    let e = s
        .driver("r3dfish", TlsVerify::SystemRoots)
        .power_state()
        .await
        .expect_err("untrusted");
    assert!(matches!(e, BmcError::Tls(_)), "{e:?}");
    let b = s.driver("r3dfish", TlsVerify::Insecure);
    assert_eq!(b.power_state().await.expect("state"), PowerState::Off);
}

#[tokio::test]
async fn a_silent_or_absent_bmc_fails_within_the_timeout() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let b = paddock_bmc::connect(
        &format!("redfish+http://127.0.0.1:{port}"),
        Credentials {
            username: "admin".into(),
            password: "x".into(),
        },
        Options {
            timeout: Duration::from_secs(2),
            tls: TlsVerify::Insecure,
        },
    )
    .expect("driver");
    let t = Instant::now();
    let e = b.power_state().await.expect_err("no answer");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.is_retryable(), "{e:?}");
    drop(silent);
    let closed = free_port();
    let b = paddock_bmc::connect(
        &format!("redfish+http://127.0.0.1:{closed}"),
        Credentials {
            username: "admin".into(),
            password: "x".into(),
        },
        Options::default(),
    )
    .expect("driver");
    let e = b.power_state().await.expect_err("nothing there");
    assert!(matches!(e, BmcError::Unreachable { .. }), "{e:?}");
}
