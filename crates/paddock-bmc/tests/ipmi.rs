//! The IPMI driver against an independent IPMI 2.0 implementation (pyghmi's
//! BMC server, from PyPI, over RMCP+ on loopback), with Debian's ipmitool
//! reading back and acting as the reference client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paddock_bmc::{Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState};

fn python() -> PathBuf {
    match std::env::var_os("PADDOCK_PYTHON") {
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
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port()
}

struct PyghmiBmc {
    child: Child,
    port: u16,
}

impl PyghmiBmc {
    fn start() -> Self {
        let port = free_udp_port();
        let mut child = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ipmi_bmc.py"))
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
    fn ipmitool(&self, password: &str, args: &[&str]) -> (bool, String) {
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

    fn power_says(&self) -> String {
        let (ok, out) = self.ipmitool("1pmi-pass", &["chassis", "power", "status"]);
        assert!(ok, "ipmitool chassis power status failed");
        out.trim().to_owned()
    }

    fn driver(&self, password: &str) -> Box<dyn Bmc> {
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

#[tokio::test]
async fn drives_power_and_boot_as_ipmitool_sees_them() {
    let bmc = PyghmiBmc::start();
    let b = bmc.driver("1pmi-pass");
    assert_eq!(b.power_state().await.expect("state"), PowerState::Off);
    assert_eq!(bmc.power_says(), "Chassis Power is off");

    b.boot_once(BootDevice::Pxe)
        .await
        .expect("boot once from PXE");
    let (ok, flags) = bmc.ipmitool("1pmi-pass", &["chassis", "bootparam", "get", "5"]);
    assert!(ok, "bootparam get");
    assert!(flags.contains("Force PXE"), "{flags}");

    b.power(PowerAction::On).await.expect("on");
    assert_eq!(bmc.power_says(), "Chassis Power is on");
    b.power(PowerAction::On)
        .await
        .expect("on again is nothing to do");
    b.power(PowerAction::Cycle).await.expect("cycle");
    assert_eq!(bmc.power_says(), "Chassis Power is on");

    // ipmitool turns it off; the driver sees it.
    let (ok, _) = bmc.ipmitool("1pmi-pass", &["chassis", "power", "off"]);
    assert!(ok, "ipmitool power off");
    assert_eq!(b.power_state().await.expect("state"), PowerState::Off);
    b.power(PowerAction::Cycle)
        .await
        .expect("cycle from off turns on");
    assert_eq!(bmc.power_says(), "Chassis Power is on");
    b.power(PowerAction::Off).await.expect("off");
    assert_eq!(bmc.power_says(), "Chassis Power is off");
    b.close().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_clearly_and_not_retried() {
    let bmc = PyghmiBmc::start();
    let b = bmc.driver("wrong");
    let e = b.power(PowerAction::On).await.expect_err("refused");
    assert!(matches!(e, BmcError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(bmc.power_says(), "Chassis Power is off", "nothing was done");
    // ipmitool is refused the same way.
    assert!(!bmc.ipmitool("wrong", &["chassis", "power", "status"]).0);
}

#[tokio::test]
async fn no_bmc_at_the_address_fails_within_the_timeout() {
    let port = free_udp_port();
    let b = paddock_bmc::connect(
        &format!("ipmi://127.0.0.1:{port}"),
        Credentials {
            username: "admin".into(),
            password: "x".into(),
        },
        Options {
            timeout: Duration::from_secs(3),
            ..Options::default()
        },
    )
    .expect("driver");
    let t = Instant::now();
    let e = b.power_state().await.expect_err("nothing there");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(e.is_retryable(), "{e:?}");
}
