//! The IPMI driver against an independent IPMI 2.0 implementation (pyghmi's
//! BMC server, from PyPI, over RMCP+ on loopback), with Debian's ipmitool
//! reading back and acting as the reference client.

mod support;

use std::time::{Duration, Instant};

use paddock_bmc::{BmcError, BootDevice, Credentials, Options, PowerAction, PowerState};
use support::{PyghmiBmc, free_udp_port};

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
