//! The Redfish driver against an independent Redfish service: the
//! `sushy-tools` emulator from PyPI (its fake driver: a system with no VM
//! behind it), over HTTPS with HTTP Basic (the emulator has no session
//! service, so the driver falls back to Basic as it must), read back with
//! curl.

mod support;

use std::time::{Duration, Instant};

use paddock_bmc::{
    Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState, TlsVerify,
};
use support::{Sushy, free_port};

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
