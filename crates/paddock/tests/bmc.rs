//! Hosts powered through their BMCs by a real server's host-bmc controller,
//! against an independent Redfish service (sushy-tools' emulator over
//! HTTPS, read back with curl), through the API and the CLI.

#[path = "../../paddock-bmc/tests/support/mod.rs"]
mod bmc_support;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bmc_support::Sushy;
use common::*;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use paddock_api::Host;
use paddock_api::host::{BMC_CONDITION, SYSTEM_NAMESPACE};
use serde_json::json;

async fn secret(client: &kube::Client, name: &str, data: &[(&str, &str)]) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .create(&PostParams::default(), &s)
        .await
        .expect("create secret");
}

async fn bmc_host(client: &kube::Client, name: &str, sushy: &Sushy, creds: &str) {
    let h: Host = serde_json::from_value(json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "Host",
        "metadata": {"name": name},
        "spec": {
            "bmc": {"driver": "redfish", "address": sushy.address(),
                    "credentialsSecret": creds, "caSecret": "bmc-ca"},
            "bootMAC": "52:54:00:aa:00:01",
        },
    }))
    .expect("host");
    Api::<Host>::all(client.clone())
        .create(&PostParams::default(), &h)
        .await
        .expect("create host");
}

/// Waits until `f` holds of the Host and the emulator's system.
async fn wait_for(
    client: &kube::Client,
    name: &str,
    sushy: &Sushy,
    what: &str,
    f: impl Fn(&Host, &serde_json::Value) -> bool,
) -> Host {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = Api::<Host>::all(client.clone())
            .get(name)
            .await
            .expect("host");
        if f(&h, &sushy.curl_system()) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: host status {:?}, system {}",
            h.status,
            sushy.curl_system()["PowerState"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn bmc_condition(h: &Host) -> Option<(String, String, String)> {
    h.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == BMC_CONDITION)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn power(h: &Host) -> Option<&str> {
    h.status.as_ref()?.power_state.as_deref()
}

/// The emulator, and a server with its controllers that trusts the
/// emulator's CA (the Secret `bmc-ca`).
async fn lab() -> (Sushy, TestServer) {
    let sushy = Sushy::start();
    let s = TestServer::start()
        .await
        .with_controllers(paddock_controllers::Config::default());
    secret(&s.client, "bmc-ca", &[("ca.crt", &sushy.ca)]).await;
    (sushy, s)
}

/// [`lab`] with the Host `name` registered by its BMC, whose password in
/// its Secret is `password`.
async fn lab_with_host(name: &str, password: &str) -> (Sushy, TestServer) {
    let (sushy, s) = lab().await;
    let creds = format!("bmc-{name}");
    secret(
        &s.client,
        &creds,
        &[("username", "admin"), ("password", password)],
    )
    .await;
    bmc_host(&s.client, name, &sushy, &creds).await;
    (sushy, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_powered_through_their_bmc_as_spec_online_says() {
    let (sushy, s) = lab_with_host("n0", "r3dfish").await;

    // Online unless it says otherwise: powered on, and shown so.
    let h = wait_for(&s.client, "n0", &sushy, "powered on", |h, sys| {
        sys["PowerState"] == "On" && power(h) == Some("On")
    })
    .await;
    let (status, reason, _) = bmc_condition(&h).expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Answered"));

    Api::<Host>::all(s.client.clone())
        .patch(
            "n0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"online": false}})),
        )
        .await
        .expect("offline");
    wait_for(&s.client, "n0", &sushy, "powered off", |h, sys| {
        sys["PowerState"] == "Off" && power(h) == Some("Off")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_bmc_password_is_a_clear_state_not_a_loop() {
    let (sushy, s) = lab_with_host("n1", "wrong").await;

    let h = wait_for(&s.client, "n1", &sushy, "refused", |h, _| {
        bmc_condition(h).is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = bmc_condition(&h).expect("condition");
    assert_eq!(reason, "BMCUnauthorized");
    assert!(message.contains("\"admin\""), "{message}");
    assert_eq!(sushy.curl_system()["PowerState"], "Off");

    // Nothing more is tried while nothing changes.
    let before = sushy.requests();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        sushy.requests(),
        before,
        "the controller kept calling the BMC"
    );
    let events: Vec<Event> = Api::<Event>::namespaced(s.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("n1"))
        .collect();
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("BMCUnauthorized"))
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));

    // The password fixed: tried again at once, and powered on.
    Api::<Secret>::namespaced(s.client.clone(), SYSTEM_NAMESPACE)
        .patch(
            "bmc-n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "r3dfish"}})),
        )
        .await
        .expect("fix the password");
    wait_for(
        &s.client,
        "n1",
        &sushy,
        "powered on after the fix",
        |h, sys| {
            sys["PowerState"] == "On"
                && power(h) == Some("On")
                && bmc_condition(h).is_some_and(|c| c.0 == "True")
        },
    )
    .await;
}

/// `paddock host add` registers a machine by its BMC (its password from a
/// file, its BMC's CA from a file); `paddock host power` turns it off and
/// on and shows it; a wrong field is refused whole, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_and_powers_hosts_by_their_bmc() {
    let (sushy, s) = lab().await;
    let kc = s.kubeconfig();
    let files = tempfile::tempdir().expect("tempdir");
    let (pw, ca) = (files.path().join("pw"), files.path().join("ca.pem"));
    std::fs::write(&pw, "r3dfish\n").expect("pw");
    std::fs::write(&ca, &sushy.ca).expect("ca");
    let (pw, ca) = (pw.to_string_lossy(), ca.to_string_lossy());

    // A MAC that is not one: refused, and neither Host nor Secret is left.
    let add = |mac: &str| {
        let address = sushy.address();
        let args = [
            "host",
            "add",
            "n2",
            "--bmc",
            &address,
            "--mac",
            mac,
            "--password-file",
            &pw,
            "--bmc-ca",
            &ca,
        ];
        paddock(&kc, &args)
    };
    let out = add("52:54:00");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spec.bootMAC"), "{}", stderr(&out));
    assert!(
        Api::<Host>::all(s.client.clone())
            .get_opt("n2")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        Api::<Secret>::namespaced(s.client.clone(), SYSTEM_NAMESPACE)
            .get_opt("bmc-n2")
            .await
            .expect("get")
            .is_none()
    );

    let out = add("52:54:00:aa:00:01");
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(&s.client, "n2", &sushy, "powered on", |h, sys| {
        sys["PowerState"] == "On" && power(h) == Some("On")
    })
    .await;
    let st = paddock_ok(&kc, &["host", "power", "status", "n2"]);
    assert!(st.contains("power On, wanted on"), "{st}");
    let list = paddock_ok(&kc, &["host", "list"]);
    assert!(list.contains("n2") && list.contains("On"), "{list}");

    paddock_ok(&kc, &["host", "power", "off", "n2"]);
    wait_for(&s.client, "n2", &sushy, "powered off", |h, sys| {
        sys["PowerState"] == "Off" && power(h) == Some("Off")
    })
    .await;
    let st = paddock_ok(&kc, &["host", "power", "status", "n2"]);
    assert!(st.contains("power Off, wanted off"), "{st}");
}
