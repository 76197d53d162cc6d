//! BMC power: every Host with a BMC is powered as its `spec.online` asks
//! (on unless it says otherwise), through its BMC, and its power is shown
//! in `status.powerState` with the `BMCReachable` condition.
//!
//! Level-triggered per host, on its own schedule: a host is looked at
//! again 30 s after a good answer (5 s after a power action, to see it
//! land), after a backoff of 5 s doubling to 5 min when the BMC did not
//! answer, and after 10 min when the answer will not change by waiting
//! (wrong credentials, an untrusted certificate, a bad address) — unless
//! its spec or its Secrets change, which makes it due at once. Status is
//! written only when it changes, and an Event only on a change too, so a
//! BMC that refuses the credentials gives one Warning, not a loop.
//!
//! A host with a boot MAC is provisioned by netboot: before it is powered
//! on it is told to boot from the network once, and its
//! `status.provisioning.state` follows what is seen of it ([`provisioning`]):
//! Registered, PoweringOn, Netbooting (the netboot endpoint served its
//! script), Joined (its agent exchanged the join token), Ready; Offline
//! when powered off on purpose; Error with the BMC's reason.
//!
//! Every BMC host holds the deprovision finalizer: deleted, it is powered
//! off through its BMC (read back) when it may be on, and its Secrets are
//! deleted, before it goes.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use paddock_api::Host;
use paddock_api::host::{
    BMC_CONDITION, DEPROVISION_FINALIZER, FENCED_CONDITION, HOST_LABEL, HostPhase,
    ProvisioningState, REPROVISION_ANNOTATION, SYSTEM_NAMESPACE,
};
use paddock_bmc::{
    Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState, TlsVerify,
};
use serde_json::json;
use tokio::time::Instant;

/// Makes a driver for a BMC address: the real drivers in the server, a
/// fake in unit tests.
pub trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        address: &str,
        credentials: Credentials,
        opts: Options,
    ) -> Result<Box<dyn Bmc>, paddock_bmc::ConnectError>;
}

/// The Redfish and IPMI drivers of `paddock_bmc`.
pub struct Drivers;

impl Connector for Drivers {
    fn connect(
        &self,
        address: &str,
        credentials: Credentials,
        opts: Options,
    ) -> Result<Box<dyn Bmc>, paddock_bmc::ConnectError> {
        paddock_bmc::connect(address, credentials, opts)
    }
}

const SETTLED: Duration = Duration::from_secs(30);
const AFTER_ACTION: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);
const WONT_CHANGE: Duration = Duration::from_secs(600);
/// How long a powered-on host may take to report Ready.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How many BMCs are talked to at once.
const IN_FLIGHT: usize = 16;

/// A step beyond keeping the power as `spec.online` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    None,
    /// Powered off, and the power-off read back: the host is fenced.
    Fenced,
    /// Told to netboot and power-cycled for this reprovision request.
    Reprovisioned(String),
}

/// What one look at a host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The BMC answered; `acted` when a power action was taken.
    Answered {
        power: PowerState,
        acted: bool,
        step: Step,
    },
    /// It failed; `retryable` when waiting may help.
    Failed {
        reason: String,
        message: String,
        retryable: bool,
    },
}

/// When a host is looked at next, after `outcome` and `failures` failures
/// in a row before it.
pub fn next_look(outcome: &Outcome, failures: u32) -> Duration {
    match outcome {
        Outcome::Answered { acted: true, .. } => AFTER_ACTION,
        Outcome::Answered { acted: false, .. } => SETTLED,
        Outcome::Failed {
            retryable: false, ..
        } => WONT_CHANGE,
        Outcome::Failed {
            retryable: true, ..
        } => FIRST_RETRY
            .saturating_mul(1 << failures.min(10))
            .min(MAX_RETRY),
    }
}

/// The power action that brings a machine in `state` to `online`, if any.
pub fn action_for(online: bool, state: PowerState) -> Option<PowerAction> {
    match (online, state) {
        (true, PowerState::Off) => Some(PowerAction::On),
        (false, PowerState::On | PowerState::PoweringOn) => Some(PowerAction::Off),
        _ => None,
    }
}

fn failed(e: &BmcError) -> Outcome {
    Outcome::Failed {
        reason: e.reason().into(),
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    let from_data = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|ByteString(b)| String::from_utf8_lossy(b).into_owned());
    from_data.or_else(|| s.string_data.as_ref().and_then(|d| d.get(key)).cloned())
}

/// Whether `h` was powered on by the controller and has not heartbeat
/// since: it is being provisioned, not dead.
fn provisioning_since_power_on(h: &Host) -> bool {
    let Some(st) = &h.status else { return false };
    let Some(on) = st
        .provisioning
        .as_ref()
        .and_then(|p| p.powered_on_at.as_ref())
    else {
        return false;
    };
    st.last_heartbeat.as_ref().is_none_or(|hb| hb.0 < on.0)
}

/// Whether `h` is to be fenced now: NotReady for `grace`, not fenced, and
/// not on its way up after a power-on.
pub fn fence_due(h: &Host, now: Timestamp, grace: Duration) -> bool {
    let Some(st) = &h.status else { return false };
    if st.phase != Some(HostPhase::NotReady) || h.fenced() || provisioning_since_power_on(h) {
        return false;
    }
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .is_some_and(|c| {
            now.as_second() - c.last_transition_time.0.as_second() >= grace.as_secs() as i64
        })
}

/// The reprovision request not yet acted on, if any.
pub fn reprovision_due(h: &Host) -> Option<String> {
    let want = h.annotations().get(REPROVISION_ANNOTATION)?;
    let done = h
        .status
        .as_ref()
        .and_then(|s| s.provisioning.as_ref())
        .and_then(|p| p.reprovisioned.as_ref());
    (done != Some(want)).then(|| want.clone())
}

/// Whether the BMC fenced this host (not the operator's word): it is kept
/// off until it is reprovisioned.
fn fenced_by_bmc(h: &Host) -> bool {
    h.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == FENCED_CONDITION && c.status == "True" && c.reason == "PoweredOff")
    })
}

/// Powers off and reads the power back until it is Off.
async fn fence(driver: &dyn Bmc, timeout: Duration) -> Result<PowerState, Outcome> {
    driver
        .power(PowerAction::Off)
        .await
        .map_err(|e| failed(&e))?;
    let deadline = Instant::now() + timeout;
    loop {
        let p = driver.power_state().await.map_err(|e| failed(&e))?;
        if p == PowerState::Off {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(Outcome::Failed {
                reason: "FenceUnconfirmed".into(),
                message: format!(
                    "powered off through the BMC, but it still reads {}",
                    p.as_str()
                ),
                retryable: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A driver for `h`'s BMC, with the credentials and CA its Secrets hold;
/// else the failure, as an outcome.
fn driver_for(
    connector: &dyn Connector,
    h: &Host,
    secret: impl Fn(&str) -> Option<Arc<Secret>>,
    timeout: Duration,
) -> Result<Box<dyn Bmc>, Outcome> {
    let Some(bmc) = &h.spec.bmc else {
        return Err(Outcome::Failed {
            reason: "NoBMC".into(),
            message: "the host has no BMC".into(),
            retryable: false,
        });
    };
    let missing = |what: String| Outcome::Failed {
        reason: "CredentialsMissing".into(),
        message: what,
        retryable: false,
    };
    let Some(creds) = secret(&bmc.credentials_secret) else {
        return Err(missing(format!(
            "Secret {SYSTEM_NAMESPACE}/{} does not exist",
            bmc.credentials_secret
        )));
    };
    let (Some(username), Some(password)) = (
        secret_value(&creds, "username"),
        secret_value(&creds, "password"),
    ) else {
        return Err(missing(format!(
            "Secret {SYSTEM_NAMESPACE}/{} needs both username and password",
            bmc.credentials_secret
        )));
    };
    let tls = match (&bmc.ca_secret, bmc.insecure_skip_verify) {
        (_, true) => TlsVerify::Insecure,
        (Some(ca), false) => match secret(ca).and_then(|s| secret_value(&s, "ca.crt")) {
            Some(pem) => TlsVerify::Ca(pem.into_bytes()),
            None => {
                return Err(missing(format!(
                    "Secret {SYSTEM_NAMESPACE}/{ca} with ca.crt does not exist"
                )));
            }
        },
        (None, false) => TlsVerify::SystemRoots,
    };
    let driver = match connector.connect(
        &bmc.address,
        Credentials { username, password },
        Options { timeout, tls },
    ) {
        Ok(d) => d,
        Err(paddock_bmc::ConnectError::Address(e)) => {
            return Err(Outcome::Failed {
                reason: "InvalidAddress".into(),
                message: e.to_string(),
                retryable: false,
            });
        }
        Err(paddock_bmc::ConnectError::Driver(e)) => return Err(failed(&e)),
    };
    Ok(driver)
}

/// Looks at one host's BMC and takes the one step its power needs.
pub async fn look(
    connector: &dyn Connector,
    h: &Host,
    secret: impl Fn(&str) -> Option<Arc<Secret>>,
    timeout: Duration,
    grace: Duration,
) -> Outcome {
    let driver = match driver_for(connector, h, secret, timeout) {
        Ok(d) => d,
        Err(o) => return o,
    };
    let out = async {
        let power = driver.power_state().await.map_err(|e| failed(&e))?;
        if fence_due(h, Timestamp::now(), grace) {
            let power = fence(driver.as_ref(), timeout).await?;
            tracing::warn!(host = %h.name_any(), "fenced: powered off through its BMC, confirmed");
            return Ok(Outcome::Answered { power, acted: true, step: Step::Fenced });
        }
        if let Some(request) = reprovision_due(h) {
            if h.spec.boot_mac.is_some() {
                driver.boot_once(BootDevice::Pxe).await.map_err(|e| failed(&e))?;
            }
            let a = if power == PowerState::Off { PowerAction::On } else { PowerAction::Cycle };
            driver.power(a).await.map_err(|e| failed(&e))?;
            tracing::info!(host = %h.name_any(), "reprovisioning: netboot and power cycle");
            return Ok(Outcome::Answered { power, acted: true, step: Step::Reprovisioned(request) });
        }
        // Fenced by the BMC: kept off until reprovisioned.
        let online = h.spec.online.unwrap_or(true) && !fenced_by_bmc(h);
        match action_for(online, power) {
            None => Ok(Outcome::Answered {
                power,
                acted: false,
                step: Step::None,
            }),
            Some(a) => {
                if a == PowerAction::On && h.spec.boot_mac.is_some() {
                    // Provisioning: from the network, this boot only.
                    if let Err(e) = driver.boot_once(BootDevice::Pxe).await {
                        if !matches!(e, BmcError::Unsupported(_)) {
                            return Err(failed(&e));
                        }
                        tracing::warn!(host = %h.name_any(), error = %e, "no one-time network boot; powering on as set up");
                    }
                }
                driver.power(a).await.map_err(|e| failed(&e))?;
                Ok(Outcome::Answered {
                    power,
                    acted: true,
                    step: Step::None,
                })
            }
        }
    }
    .await;
    driver.close().await;
    out.unwrap_or_else(|e| e)
}

/// Where a netbooted host is, from what is known of it and the BMC's
/// latest answer: (state, reason, message).
pub fn provisioning(h: &Host, outcome: &Outcome) -> (ProvisioningState, String, String) {
    use ProvisioningState as S;
    let st = h.status.clone().unwrap_or_default();
    let p = st.provisioning.clone().unwrap_or_default();
    let at = |t: &Option<Time>| t.as_ref().map(|t| t.0);
    let (powered, netbooted, joined) =
        (at(&p.powered_on_at), at(&p.netbooted_at), at(&p.joined_at));
    let s = |state: S, reason: &str, message: String| (state, reason.to_owned(), message);
    if h.metadata.deletion_timestamp.is_some() {
        return s(
            S::Deprovisioning,
            "Deleting",
            "the host is being deleted".into(),
        );
    }
    if let Outcome::Failed {
        reason, message, ..
    } = outcome
    {
        return s(S::Error, reason, message.clone());
    }
    if fenced_by_bmc(h) {
        return s(
            S::Offline,
            "Fenced",
            "fenced: powered off through its BMC; `paddock host reprovision` brings it back".into(),
        );
    }
    if !h.spec.online.unwrap_or(true) {
        return s(S::Offline, "PoweredOff", "spec.online is false".into());
    }
    if st.phase == Some(HostPhase::Ready) && !provisioning_since_power_on(h) {
        if h.spec.unschedulable {
            return s(
                S::Maintenance,
                "Cordoned",
                "Ready and cordoned: no new Machines go there".into(),
            );
        }
        return s(S::Ready, "AgentReady", "its agent reports Ready".into());
    }
    // What happened before the last power-on does not count.
    let netbooted = netbooted.filter(|n| powered.is_none_or(|p| *n >= p));
    let joined = joined.filter(|j| netbooted.is_some_and(|n| *j >= n));
    // Up since the power-on yet? Not after PROVISION_TIMEOUT: an error,
    // for the operator (reprovision) to look at.
    if let Some(p) = powered
        && Timestamp::now().as_second() - p.as_second() > PROVISION_TIMEOUT.as_secs() as i64
    {
        return s(
            S::Error,
            "ProvisioningTimeout",
            format!(
                "not Ready {} minutes after it was powered on (see its console; paddock host reprovision tries again)",
                PROVISION_TIMEOUT.as_secs() / 60
            ),
        );
    }
    if joined.is_some() {
        return s(
            S::Joined,
            "Joined",
            "its agent joined; waiting for it to report Ready".into(),
        );
    }
    if netbooted.is_some() {
        return s(
            S::Netbooting,
            "ScriptServed",
            "it fetched its iPXE script: the host image is booting".into(),
        );
    }
    match outcome {
        Outcome::Answered { acted: true, .. }
        | Outcome::Answered {
            power: PowerState::On | PowerState::PoweringOn,
            ..
        } => s(
            S::PoweringOn,
            "PoweredOn",
            "set to boot from the network once and powered on; waiting for it to netboot".into(),
        ),
        _ => s(S::Registered, "Registered", "registered by its BMC".into()),
    }
}

/// The condition an outcome shows, keeping the transition time when its
/// status did not change.
fn condition(outcome: &Outcome, prev: Option<&Condition>, now: Timestamp) -> Condition {
    let (status, reason, message) = match outcome {
        Outcome::Answered { .. } => (
            "True",
            "Answered".to_owned(),
            "the BMC answers and accepts the credentials".to_owned(),
        ),
        Outcome::Failed {
            reason, message, ..
        } => ("False", reason.clone(), message.clone()),
    };
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: BMC_CONDITION.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

/// Writes what `outcome` shows of `h`, if that changes anything, with
/// Events for what changed. Other writers' conditions are kept.
async fn record(client: &kube::Client, h: &Host, outcome: &Outcome) -> anyhow::Result<()> {
    let st = h.status.clone().unwrap_or_default();
    let prev = st.conditions.iter().find(|c| c.type_ == BMC_CONDITION);
    let cond = condition(outcome, prev, Timestamp::now());
    let power = match outcome {
        Outcome::Answered { power, .. } => Some(power.as_str().to_owned()),
        Outcome::Failed { .. } => st.power_state.clone(),
    };
    let same_condition = prev.is_some_and(|p| {
        p.status == cond.status && p.reason == cond.reason && p.message == cond.message
    });
    let step = match outcome {
        Outcome::Answered { step, .. } => step.clone(),
        Outcome::Failed { .. } => Step::None,
    };
    let fence_change = match &step {
        Step::None => None,
        Step::Fenced => Some(Condition {
            type_: FENCED_CONDITION.into(),
            status: "True".into(),
            reason: "PoweredOff".into(),
            message: "powered off through its BMC and the power-off confirmed: its VMs cannot run, its Machines are replaced elsewhere; it stays off until `paddock host reprovision`".into(),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: None,
        }),
        Step::Reprovisioned(_) => Some(Condition {
            type_: FENCED_CONDITION.into(),
            status: "False".into(),
            reason: "Reprovisioned".into(),
            message: "netbooted afresh".into(),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: None,
        }),
    };
    let prov = st.provisioning.clone().unwrap_or_default();
    let (state, reason, message) = provisioning(h, outcome);
    let powered_on_now = matches!(
        outcome,
        Outcome::Answered {
            acted: true,
            power: PowerState::Off,
            step: Step::None,
        }
    );
    let same_state = h.spec.boot_mac.is_none()
        || (prov.state == Some(state)
            && prov.reason.as_deref() == Some(reason.as_str())
            && !powered_on_now);
    if same_condition && same_state && power == st.power_state && step == Step::None {
        return Ok(());
    }
    let mut conditions: Vec<Condition> = st
        .conditions
        .iter()
        .filter(|c| c.type_ != BMC_CONDITION)
        .filter(|c| fence_change.is_none() || c.type_ != FENCED_CONDITION)
        .cloned()
        .collect();
    conditions.push(cond.clone());
    conditions.extend(fence_change.clone());
    let mut status = json!({"powerState": power, "conditions": conditions});
    if h.spec.boot_mac.is_some() {
        let mut p = json!({"state": state, "reason": reason, "message": message});
        if powered_on_now || matches!(step, Step::Reprovisioned(_)) {
            p["poweredOnAt"] = json!(Time(Timestamp::now()));
        }
        if let Step::Reprovisioned(r) = &step {
            p["reprovisioned"] = json!(r);
        }
        status["provisioning"] = p;
    }
    Api::<Host>::all(client.clone())
        .patch_status(
            &h.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": h.resource_version()},
                "status": status,
            })),
        )
        .await?;
    if let Some(c) = &fence_change {
        crate::events::record(
            client,
            h,
            c.status == "True",
            &c.reason,
            format!("host {}: {}", h.name_any(), c.message),
        )
        .await;
    }
    if h.spec.boot_mac.is_some() && !same_state && prov.state != Some(state) {
        crate::events::record(
            client,
            h,
            state == ProvisioningState::Error,
            state.as_str(),
            format!("host {}: {}", h.name_any(), message),
        )
        .await;
    }
    if !same_condition {
        crate::events::record(
            client,
            h,
            cond.status != "True",
            &cond.reason,
            format!("BMC {}: {}", h.name_any(), cond.message),
        )
        .await;
    }
    Ok(())
}

/// Whether Paddock may have left `h` powered on: its BMC last read
/// anything but Off. (One whose BMC never answered was never powered on by
/// Paddock, and is not waited for.)
pub fn may_be_on(h: &Host) -> bool {
    h.status
        .as_ref()
        .and_then(|s| s.power_state.as_deref())
        .is_some_and(|p| p != PowerState::Off.as_str())
}

/// Deprovisions a deleted host: powers it off through its BMC (read back)
/// when it may be on, deletes its Secrets, releases the finalizer. An
/// error leaves the finalizer, to be tried again.
async fn deprovision(
    client: &kube::Client,
    connector: &dyn Connector,
    h: &Host,
    secret: impl Fn(&str) -> Option<Arc<Secret>>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = h.name_any();
    if may_be_on(h) {
        let driver = driver_for(connector, h, secret, timeout)
            .map_err(|o| anyhow::anyhow!("cannot power {name} off before it goes: {o:?}"))?;
        let r = fence(driver.as_ref(), timeout).await;
        driver.close().await;
        r.map_err(|o| anyhow::anyhow!("cannot power {name} off before it goes: {o:?}"))?;
        tracing::info!(host = %name, "deprovisioned: powered off through its BMC");
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    secrets
        .delete_collection(
            &Default::default(),
            &kube::api::ListParams::default().labels(&format!("{HOST_LABEL}={name}")),
        )
        .await?;
    set_finalizer(client, h, false).await
}

/// Adds or removes the deprovision finalizer, under the Host's
/// resourceVersion.
async fn set_finalizer(client: &kube::Client, h: &Host, on: bool) -> anyhow::Result<()> {
    let mut fins: Vec<String> = h
        .finalizers()
        .iter()
        .filter(|f| *f != DEPROVISION_FINALIZER)
        .cloned()
        .collect();
    if on {
        fins.push(DEPROVISION_FINALIZER.into());
    }
    Api::<Host>::all(client.clone())
        .patch(
            &h.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": h.resource_version(), "finalizers": fins},
            })),
        )
        .await?;
    Ok(())
}

/// A host's place in the schedule.
struct Track {
    next: Instant,
    failures: u32,
    fingerprint: u64,
}

/// What, when it changes, makes a host due at once: its BMC settings, its
/// wanted power, the Secrets they name, and for a netbooted host what its
/// netboot and agent report.
fn fingerprint(h: &Host, secret: impl Fn(&str) -> Option<Arc<Secret>>) -> u64 {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    if let Some(b) = &h.spec.bmc {
        b.address.hash(&mut s);
        b.credentials_secret.hash(&mut s);
        b.ca_secret.hash(&mut s);
        b.insecure_skip_verify.hash(&mut s);
        for name in std::iter::once(&b.credentials_secret).chain(b.ca_secret.as_ref()) {
            secret(name).and_then(|x| x.resource_version()).hash(&mut s);
        }
    }
    h.spec.online.hash(&mut s);
    h.annotations().get(REPROVISION_ANNOTATION).hash(&mut s);
    // What moves a host's fencing and a netbooted host's provisioning on.
    if let Some(st) = &h.status {
        st.phase.map(HostPhase::as_str).hash(&mut s);
        h.fenced().hash(&mut s);
        if let Some(p) = &st.provisioning {
            for t in [&p.netbooted_at, &p.joined_at] {
                t.as_ref().map(|t| t.0.as_second()).hash(&mut s);
            }
        }
    }
    s.finish()
}

/// The Secret `name` of the platform's namespace, as the watch shows it.
fn system_secret(secrets: &Store<Secret>, name: &str) -> Option<Arc<Secret>> {
    secrets.get(&kube::runtime::reflector::ObjectRef::new(name).within(SYSTEM_NAMESPACE))
}

/// Runs the BMC power loop until dropped.
pub async fn run(
    client: kube::Client,
    connector: Arc<dyn Connector>,
    timeout: Duration,
    grace: Duration,
) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let hosts = watchers.store::<Host>(Api::all(client.clone()), wake.clone());
    let secrets: Store<Secret> = watchers.store::<Secret>(
        Api::namespaced(client.clone(), SYSTEM_NAMESPACE),
        wake.clone(),
    );
    let _ = hosts.wait_until_ready().await;
    let _ = secrets.wait_until_ready().await;
    let mut tracks: HashMap<String, Track> = HashMap::new();
    let mut retries: HashMap<String, (Instant, u32)> = HashMap::new();
    loop {
        let now = Instant::now();
        paddock_metrics::queue_depth(
            "host-bmc",
            tracks.values().filter(|t| t.next <= now).count(),
        );
        let secret = |name: &str| system_secret(&secrets, name);
        let all = hosts.state();
        let names: std::collections::HashSet<String> = all.iter().map(|h| h.name_any()).collect();
        tracks.retain(|name, _| names.contains(name));
        retries.retain(|name, _| names.contains(name));
        // Finalizers: held by every BMC host; a deleted one is
        // deprovisioned (its own backoff when that fails).
        for h in all.iter().filter(|h| h.spec.bmc.is_some()) {
            let held = h.finalizers().iter().any(|f| f == DEPROVISION_FINALIZER);
            let deleting = h.metadata.deletion_timestamp.is_some();
            let name = h.name_any();
            let r = match (deleting, held) {
                (false, false) => set_finalizer(&client, h, true).await,
                (true, true) if retries.get(&name).is_none_or(|(next, _)| *next <= now) => {
                    let r = deprovision(&client, connector.as_ref(), h, secret, timeout).await;
                    if r.is_err() {
                        // Tried again after the usual backoff.
                        let failures = retries.get(&name).map_or(1, |(_, f)| f + 1);
                        let wait = FIRST_RETRY
                            .saturating_mul(1 << failures.min(6))
                            .min(MAX_RETRY);
                        retries.insert(name.clone(), (now + wait, failures));
                    }
                    r
                }
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::warn!(host = %name, error = format!("{e:#}"), "BMC finalizer");
            }
        }
        let due: Vec<(Arc<Host>, u64)> = all
            .iter()
            .filter(|h| h.spec.bmc.is_some() && h.metadata.deletion_timestamp.is_none())
            .filter_map(|h| {
                let f = fingerprint(h, secret);
                match tracks.get(&h.name_any()) {
                    Some(t) if t.fingerprint == f && t.next > now => None,
                    _ => Some((h.clone(), f)),
                }
            })
            .collect();
        let looked: Vec<(Arc<Host>, u64, Outcome)> = futures::stream::iter(due)
            .map(|(h, f)| {
                let connector = connector.clone();
                let secrets = secrets.clone();
                async move {
                    let secret = |name: &str| system_secret(&secrets, name);
                    let out = look(connector.as_ref(), &h, secret, timeout, grace).await;
                    (h, f, out)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (h, f, out) in looked {
            let name = h.name_any();
            let failures = match (&out, tracks.get(&name)) {
                (Outcome::Failed { .. }, Some(t)) => t.failures + 1,
                (Outcome::Failed { .. }, None) => 1,
                _ => 0,
            };
            if let Outcome::Failed {
                reason, message, ..
            } = &out
            {
                tracing::warn!(host = %name, reason, message, "BMC");
            }
            if let Err(e) = record(&client, &h, &out).await {
                // A conflict or a lost write: looked at again soon.
                tracing::debug!(host = %name, error = format!("{e:#}"), "BMC status not written");
                tracks.remove(&name);
                continue;
            }
            let mut wait = next_look(&out, failures.saturating_sub(1));
            // A NotReady host is looked at often: it may fall due for fencing.
            if h.status.as_ref().and_then(|s| s.phase) == Some(HostPhase::NotReady) && !h.fenced() {
                wait = wait.min(AFTER_ACTION);
            }
            tracks.insert(
                name,
                Track {
                    next: Instant::now() + wait,
                    failures,
                    fingerprint: f,
                },
            );
        }
        paddock_metrics::reconciled("host-bmc", true, now.elapsed());
        // Woken by a change (a spec or Secret edited), or each second for
        // what fell due.
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: Duration = Duration::from_secs(60);
    use paddock_api::host::{Bmc as BmcSpec, BmcDriver, HostSpec};
    use paddock_bmc::fake::FakeBmc;
    use std::collections::BTreeMap;

    /// Connects every address to one FakeBmc.
    struct ToFake(FakeBmc);

    impl Connector for ToFake {
        fn connect(
            &self,
            address: &str,
            _: Credentials,
            _: Options,
        ) -> Result<Box<dyn Bmc>, paddock_bmc::ConnectError> {
            address.parse::<paddock_bmc::BmcAddress>()?;
            Ok(Box::new(self.0.clone()))
        }
    }

    fn host(online: Option<bool>, address: &str) -> Host {
        Host::new(
            "h1",
            HostSpec {
                bmc: Some(BmcSpec {
                    driver: BmcDriver::Redfish,
                    address: address.into(),
                    credentials_secret: "bmc-h1".into(),
                    ca_secret: None,
                    insecure_skip_verify: false,
                }),
                online,
                ..Default::default()
            },
        )
    }

    fn creds(name: &str) -> Option<Arc<Secret>> {
        (name == "bmc-h1").then(|| {
            Arc::new(Secret {
                data: Some(BTreeMap::from([
                    ("username".into(), ByteString(b"admin".to_vec())),
                    ("password".into(), ByteString(b"pw".to_vec())),
                ])),
                ..Default::default()
            })
        })
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn powers_on_what_should_be_online_once() {
        let bmc = FakeBmc::new(PowerState::Off);
        let c = ToFake(bmc.clone());
        let h = host(None, "redfish://10.0.0.5");
        let out = look(&c, &h, creds, T, G).await;
        assert_eq!(
            out,
            Outcome::Answered {
                power: PowerState::Off,
                acted: true,
                step: Step::None,
            }
        );
        assert_eq!(next_look(&out, 0), AFTER_ACTION);
        let out = look(&c, &h, creds, T, G).await;
        assert_eq!(
            out,
            Outcome::Answered {
                power: PowerState::On,
                acted: false,
                step: Step::None,
            }
        );
        assert_eq!(next_look(&out, 0), SETTLED);
        assert_eq!(bmc.calls(), ["power on"]);
    }

    #[tokio::test]
    async fn powers_off_what_should_be_offline() {
        let bmc = FakeBmc::new(PowerState::On);
        let c = ToFake(bmc.clone());
        look(&c, &host(Some(false), "redfish://10.0.0.5"), creds, T, G).await;
        assert_eq!(bmc.calls(), ["power off"]);
    }

    #[tokio::test]
    async fn wrong_credentials_are_reported_and_not_retried_soon() {
        let bmc = FakeBmc::new(PowerState::Off);
        bmc.0.lock().unwrap().fail = Some(|| BmcError::Unauthorized {
            user: "admin".into(),
        });
        let out = look(
            &ToFake(bmc.clone()),
            &host(None, "redfish://10.0.0.5"),
            creds,
            T,
            G,
        )
        .await;
        let Outcome::Failed {
            reason, retryable, ..
        } = &out
        else {
            panic!("{out:?}")
        };
        assert_eq!(reason, "BMCUnauthorized");
        assert!(!retryable);
        assert_eq!(next_look(&out, 5), WONT_CHANGE);
        assert!(bmc.calls().is_empty());
    }

    #[tokio::test]
    async fn missing_secrets_and_bad_addresses_say_so() {
        let c = ToFake(FakeBmc::new(PowerState::Off));
        let out = look(&c, &host(None, "redfish://10.0.0.5"), |_| None, T, G).await;
        assert!(
            matches!(&out, Outcome::Failed { reason, message, .. } if reason == "CredentialsMissing" && message.contains("bmc-h1")),
            "{out:?}"
        );
        let out = look(&c, &host(None, "redfish://10.0.0.5/x"), creds, T, G).await;
        assert!(
            matches!(&out, Outcome::Failed { reason, retryable: false, .. } if reason == "InvalidAddress"),
            "{out:?}"
        );
    }

    #[test]
    fn unanswered_bmcs_back_off_to_five_minutes() {
        let out = Outcome::Failed {
            reason: "BMCUnreachable".into(),
            message: String::new(),
            retryable: true,
        };
        assert_eq!(next_look(&out, 0), Duration::from_secs(5));
        assert_eq!(next_look(&out, 1), Duration::from_secs(10));
        assert_eq!(next_look(&out, 3), Duration::from_secs(40));
        assert_eq!(next_look(&out, 20), MAX_RETRY);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("t");
        let t1 = Timestamp::from_second(1_800_000_100).expect("t");
        let ok = Outcome::Answered {
            power: PowerState::On,
            acted: false,
            step: Step::None,
        };
        let c0 = condition(&ok, None, t0);
        let c1 = condition(&ok, Some(&c0), t1);
        assert_eq!(c1.last_transition_time, Time(t0));
        let bad = Outcome::Failed {
            reason: "BMCTimeout".into(),
            message: "m".into(),
            retryable: true,
        };
        let c2 = condition(&bad, Some(&c1), t1);
        assert_eq!(
            (c2.status.as_str(), c2.last_transition_time),
            ("False", Time(t1))
        );
    }

    #[test]
    fn power_actions_follow_online() {
        assert_eq!(action_for(true, PowerState::Off), Some(PowerAction::On));
        assert_eq!(action_for(true, PowerState::PoweringOn), None);
        assert_eq!(action_for(false, PowerState::On), Some(PowerAction::Off));
        assert_eq!(action_for(false, PowerState::PoweringOff), None);
    }

    #[tokio::test]
    async fn a_dead_host_is_fenced_kept_off_and_brought_back_by_reprovisioning() {
        let bmc = FakeBmc::new(PowerState::On);
        let c = ToFake(bmc.clone());
        let mut h = host(None, "redfish://10.0.0.5");
        h.spec.boot_mac = Some("52:54:00:00:00:01".into());
        let since = Timestamp::now() - jiff::SignedDuration::from_secs(61);
        h.status = Some(paddock_api::host::HostStatus {
            phase: Some(HostPhase::NotReady),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "LeaseExpired".into(),
                message: String::new(),
                last_transition_time: Time(since),
                observed_generation: None,
            }],
            ..Default::default()
        });
        // Within its grace: nothing.
        let out = look(&c, &h, creds, T, Duration::from_secs(120)).await;
        assert!(
            matches!(out, Outcome::Answered { acted: false, .. }),
            "{out:?}"
        );
        // Past it: powered off, and that read back.
        let out = look(&c, &h, creds, T, G).await;
        assert_eq!(
            out,
            Outcome::Answered {
                power: PowerState::Off,
                acted: true,
                step: Step::Fenced,
            }
        );
        assert_eq!(bmc.calls(), ["power off"]);
        // Fenced: kept off, although online.
        if let Some(st) = h.status.as_mut() {
            st.conditions.push(Condition {
                type_: FENCED_CONDITION.into(),
                status: "True".into(),
                reason: "PoweredOff".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::now()),
                observed_generation: None,
            });
        }
        assert!(!fence_due(&h, Timestamp::now(), G));
        let out = look(&c, &h, creds, T, G).await;
        assert!(
            matches!(out, Outcome::Answered { acted: false, .. }),
            "{out:?}"
        );
        assert_eq!(bmc.calls(), ["power off"]);
        // Reprovisioned: netboot once, powered on; once per request.
        h.annotations_mut()
            .insert(REPROVISION_ANNOTATION.into(), "1".into());
        let out = look(&c, &h, creds, T, G).await;
        assert_eq!(
            out,
            Outcome::Answered {
                power: PowerState::Off,
                acted: true,
                step: Step::Reprovisioned("1".into()),
            }
        );
        assert_eq!(bmc.calls(), ["power off", "boot once Pxe", "power on"]);
        if let Some(s) = h.status.as_mut() {
            s.provisioning = Some(paddock_api::host::Provisioning {
                reprovisioned: Some("1".into()),
                ..Default::default()
            });
        }
        assert_eq!(reprovision_due(&h), None);
        // Unfenced and on its way up (powered on after its last
        // heartbeat): not fenced again while it boots.
        if let Some(st) = h.status.as_mut() {
            st.conditions.retain(|c| c.type_ != FENCED_CONDITION);
            st.last_heartbeat = Some(Time(since));
            if let Some(p) = st.provisioning.as_mut() {
                p.powered_on_at = Some(Time(Timestamp::now()));
            }
        }
        assert!(!fence_due(&h, Timestamp::now(), G));
        let (state, _, _) = provisioning(
            &h,
            &Outcome::Answered {
                power: PowerState::On,
                acted: false,
                step: Step::None,
            },
        );
        assert_eq!(state, ProvisioningState::PoweringOn);
    }
}
