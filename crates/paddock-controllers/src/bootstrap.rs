//! The cluster controller's PKI and bootstrap-data steps: the cluster's
//! `<cluster>-pki` Secret (made once, owned by the Cluster) and each
//! Machine's `<machine>-bootstrap` Secret (owned by the Machine, so it goes
//! with it).
//!
//! Exactly one Machine of a cluster runs `kubeadm init` at a time: the PKI
//! Secret's annotation [`INIT_MACHINE`] names it, set (conditionally on the
//! Secret's resourceVersion) before its bootstrap data is written, and
//! [`INIT_HOST`] records the host it was bound to. Once the control plane
//! has initialized (`status.initialization`, set by the gateway when a
//! control-plane VM first answers on the API port) a replacement
//! control-plane Machine joins, never re-initializes.
//!
//! If the init Machine is gone before that — its host died during `kubeadm
//! init` — and a gateway records initialization (without one the two cases
//! cannot be told apart, and the init Machine is named once) — a control-plane Machine that has no bootstrap data yet (its
//! replacement) is named instead, with an Event, but only when the old VM
//! is known not to run: its host is Ready again (its agent stops the VMs of
//! Machines that are gone) or removed, or it never had one. A host that is
//! merely unreachable may still be running it, and a second init would make
//! a second etcd: until then the replacement gets no bootstrap data and a
//! Warning Event says what the cluster waits for. Likewise if other control
//! planes were already given join data, which the operator is told.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use paddock_api::{Cluster, LABEL_CLUSTER, Machine, MachineRole};
use paddock_bootstrap::{ClusterPki, Node, Role};
use serde_json::json;

use crate::Config;

/// Annotation on the PKI Secret naming the Machine that runs `kubeadm init`.
pub const INIT_MACHINE: &str = "paddock.io/init-machine";
/// Annotation on the PKI Secret naming the host the init Machine was bound to.
pub const INIT_HOST: &str = "paddock.io/init-host";
/// Annotation on the PKI Secret with the last lost-init-Machine report, so
/// that it is made once.
pub const INIT_LOST: &str = "paddock.io/init-lost";

/// What [`ensure_bootstrap`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bootstrapped {
    /// Bootstrap data Secrets written.
    pub made: usize,
    /// Why control-plane Machines were given none yet, if they were not.
    pub waiting: Option<String>,
}

/// Records, until the control plane has initialized, which host the init
/// Machine is bound to (see the module's documentation). `pki` is the
/// cluster's PKI Secret as cached.
pub async fn track_init_host(
    client: &kube::Client,
    c: &Cluster,
    pki: Option<&ObjectMeta>,
    machines: &[Machine],
) -> kube::Result<()> {
    let Some(pki) = pki else { return Ok(()) };
    if initialized(c) {
        return Ok(());
    }
    let Some(ann) = &pki.annotations else {
        return Ok(());
    };
    let Some(init) = ann.get(INIT_MACHINE) else {
        return Ok(());
    };
    let Some(host) = machines
        .iter()
        .find(|m| m.name_any() == *init)
        .and_then(|m| m.spec.host_name.clone())
    else {
        return Ok(());
    };
    if ann.get(INIT_HOST) == Some(&host) {
        return Ok(());
    }
    let api = Api::<Secret>::namespaced(client.clone(), &c.namespace().unwrap_or_default());
    annotate(&api, pki, json!({INIT_HOST: host})).await
}

/// Whether the VM of a lost init Machine bound to `host` is known not to
/// run: the host is gone, or Ready (its agent stops VMs of Machines that
/// are gone). `Err` says what the cluster waits for.
async fn init_vm_stopped(
    client: &kube::Client,
    host: Option<&str>,
) -> anyhow::Result<Result<(), String>> {
    let Some(host) = host else { return Ok(Ok(())) };
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    Ok(match hosts.get_opt(host).await? {
        None => Ok(()),
        // Back (its agent stopped the VM), or fenced (off: it cannot run).
        Some(h)
            if h.fenced()
                || h.status.as_ref().and_then(|s| s.phase)
                    == Some(paddock_api::HostPhase::Ready) =>
        {
            Ok(())
        }
        Some(_) => Err(format!(
            "host {host}, which may still run it, to be Ready again, fenced (paddock host fence {host}) or removed (kubectl delete host {host})"
        )),
    })
}

fn owner<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: o.name_any(),
        uid: o.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn secret(
    name: String,
    cluster: &str,
    type_: &str,
    owner: OwnerReference,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(BTreeMap::from([(
                LABEL_CLUSTER.to_owned(),
                cluster.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn decoded(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// The cluster's PKI Secret, made if missing. Never replaced.
pub async fn ensure_pki(client: &kube::Client, c: &Cluster) -> anyhow::Result<Secret> {
    let ns = c.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = paddock_bootstrap::pki::secret_name(&c.name_any());
    if let Some(s) = api.get_opt(&name).await? {
        let mine = s
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == c.metadata.uid.as_ref());
        if mine {
            return Ok(s);
        }
        // Left by a deleted cluster of the same name: never reuse its keys.
        api.delete(
            &name,
            &kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: s.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await?;
        anyhow::bail!(
            "{name} belonged to an earlier cluster of this name; removed it, making new keys next"
        );
    }
    let pki = ClusterPki::generate(&c.name_any())?;
    let s = secret(
        name.clone(),
        &c.name_any(),
        paddock_bootstrap::pki::SECRET_TYPE,
        owner(c),
        pki.to_data(),
    );
    match api.create(&PostParams::default(), &s).await {
        Ok(s) => {
            tracing::info!(cluster = %c.name_any(), "made the cluster's PKI");
            Ok(s)
        }
        // Made meanwhile (another pass): use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Writes the bootstrap data Secret of every live Machine that lacks one.
/// `have` says whether a Secret is known to exist (the controller's cache);
/// unknown ones are checked against the API before anything is made.
pub async fn ensure_bootstrap(
    client: &kube::Client,
    cfg: &Config,
    c: &Cluster,
    machines: &[Machine],
    have: impl Fn(&str) -> bool,
) -> anyhow::Result<Bootstrapped> {
    let missing: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| m.spec.bootstrap_secret.as_deref().is_some_and(|s| !have(s)))
        .collect();
    if missing.is_empty() {
        return Ok(Bootstrapped::default());
    }
    let ns = c.namespace().unwrap_or_default();
    let cluster = c.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // From the API's watch cache as it stands (no wait for it to catch up
    // with the store): a Secret made a moment ago and not listed yet is
    // refused as existing when made again, which is harmless.
    let existing: Vec<String> = api
        .list_metadata(
            &ListParams::default()
                .labels(&format!("{LABEL_CLUSTER}={cluster}"))
                .match_any(),
        )
        .await?
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    let missing: Vec<&Machine> = missing
        .into_iter()
        .filter(|m| {
            m.spec
                .bootstrap_secret
                .as_ref()
                .is_some_and(|s| !existing.contains(s))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Bootstrapped::default());
    }
    let pki_secret = ensure_pki(client, c).await?;
    let pki = ClusterPki::from_data(&decoded(&pki_secret))?;

    let choice = choose_init(client, cfg, c, machines, &missing, &pki_secret).await?;
    let overlay = c
        .status
        .as_ref()
        .and_then(|s| s.overlay.clone())
        .ok_or_else(|| anyhow::anyhow!("no overlay yet"))?;
    let gateway = overlay.gateway.parse()?;
    let renderer = paddock_bootstrap::Renderer::new(&pki)?;
    let mut secrets = Vec::new();
    for m in missing {
        if choice.hold_control_planes && m.spec.role == MachineRole::ControlPlane {
            // Kept for the init role until the lost init VM is known stopped.
            continue;
        }
        let (Some(secret_name), Some(address), Some(mac)) =
            (&m.spec.bootstrap_secret, &m.spec.ip, &m.spec.mac)
        else {
            continue;
        };
        let role = match m.spec.role {
            MachineRole::ControlPlane
                if choice.machine.as_deref() == Some(m.name_any().as_str()) =>
            {
                Role::InitControlPlane
            }
            MachineRole::ControlPlane => Role::JoinControlPlane,
            MachineRole::Worker => Role::Worker,
        };
        let node = Node {
            cluster: cluster.clone(),
            org: ns.clone(),
            hostname: m.name_any(),
            role,
            address: address.clone(),
            mac: mac.clone(),
            gateway,
            mtu: cfg.overlay_mtu,
            kubernetes_version: c.spec.kubernetes_version.clone(),
            pod_cidr: c.spec.network.pod_cidr.clone(),
            service_cidr: c.spec.network.service_cidr.clone(),
            api_name: api_name(cfg, c),
        };
        let data = renderer.render(&node)?;
        let s = secret(
            secret_name.clone(),
            &cluster,
            paddock_bootstrap::SECRET_TYPE,
            owner(m),
            BTreeMap::from([
                (paddock_bootstrap::USER_DATA.to_owned(), data.user_data),
                (
                    paddock_bootstrap::NETWORK_CONFIG.to_owned(),
                    data.network_config,
                ),
            ]),
        );
        secrets.push(s);
    }
    let api = &api;
    let mut results = futures::stream::iter(secrets)
        .map(|s| async move { api.create(&PostParams::default(), &s).await })
        .buffer_unordered(crate::cluster::CREATES_IN_FLIGHT);
    let (mut made, mut failed) = (0, None);
    while let Some(res) = results.next().await {
        match res {
            Ok(_) => made += 1,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(Bootstrapped {
        made,
        waiting: choice.waiting,
    })
}

/// Which Machine of the cluster runs `kubeadm init` (see the module's
/// documentation), and whether control planes must wait for it.
struct InitChoice {
    /// The init Machine, once one is named.
    machine: Option<String>,
    /// What the cluster waits for, if anything.
    waiting: Option<String>,
    /// Control planes without bootstrap data are kept for the init role.
    hold_control_planes: bool,
}

/// Names the init Machine (once, or again when the lost one is known
/// stopped), recording reports on the PKI Secret so they are made once.
async fn choose_init(
    client: &kube::Client,
    cfg: &Config,
    c: &Cluster,
    machines: &[Machine],
    missing: &[&Machine],
    pki_secret: &Secret,
) -> anyhow::Result<InitChoice> {
    let ns = c.namespace().unwrap_or_default();
    let cluster = c.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Named once, and named again only if it is gone before the control
    // plane initialized.
    let mut init = pki_secret.annotations().get(INIT_MACHINE).cloned();
    let live = |name: &str| {
        machines
            .iter()
            .any(|m| m.name_any() == name && m.metadata.deletion_timestamp.is_none())
    };
    let lost = init
        .as_deref()
        .filter(|name| cfg.initialization_recorded && !initialized(c) && !live(name))
        .map(str::to_owned);
    // Control planes that were given join data wait for the lost one; a new
    // init beside them would start a second etcd. They are left to the
    // operator (deleting them makes replacements that may initialize).
    let joined: Vec<String> = machines
        .iter()
        .filter(|m| m.spec.role == MachineRole::ControlPlane)
        .filter(|m| !missing.iter().any(|x| x.name_any() == m.name_any()))
        .map(|m| m.name_any())
        .collect();
    let mut waiting = None;
    if let Some(gone) = lost.as_deref() {
        let wait = if joined.is_empty() {
            init_vm_stopped(
                client,
                pki_secret.annotations().get(INIT_HOST).map(String::as_str),
            )
            .await?
            .err()
            .map(|w| format!("waits for {w}"))
        } else {
            Some(format!(
                "control planes {} wait to join it; delete them to initialize the cluster anew",
                joined.join(", ")
            ))
        };
        if let Some(w) = wait {
            let why =
                format!("init Machine {gone} is gone before the control plane initialized; {w}");
            // Said once: the pass whose conditional write of the PKI
            // Secret's INIT_LOST annotation wins records the Event.
            if pki_secret.annotations().get(INIT_LOST) != Some(&why) {
                annotate(&api, &pki_secret.metadata, json!({INIT_LOST: why})).await?;
                tracing::warn!(cluster = %cluster, org = %ns, "{why}");
                crate::events::record(client, c, true, "InitMachineLost", why.clone()).await;
            }
            waiting = Some(why);
        }
    }
    let lost = lost.filter(|_| waiting.is_none());
    if init.is_none() || lost.is_some() {
        // A first pick may be any control plane; a new one must be a Machine
        // that has not been given join data.
        let mut cps: Vec<&Machine> = if lost.is_some() {
            missing.to_vec()
        } else {
            machines.iter().collect()
        };
        cps.retain(|m| {
            m.spec.role == MachineRole::ControlPlane && m.metadata.deletion_timestamp.is_none()
        });
        cps.sort_by_key(|m| {
            (
                m.metadata.creation_timestamp.clone().map(|t| t.0),
                m.name_any(),
            )
        });
        if let Some(first) = cps.first() {
            // The new init Machine's host is recorded once it is bound.
            annotate(
                &api,
                &pki_secret.metadata,
                json!({INIT_MACHINE: first.name_any(), INIT_HOST: null}),
            )
            .await?;
            if let Some(gone) = &lost {
                let why = format!(
                    "init Machine {gone} is gone before the control plane initialized; {} initializes the cluster instead",
                    first.name_any()
                );
                tracing::warn!(cluster = %cluster, org = %ns, "{why}");
                crate::events::record(client, c, true, "InitMachineReplaced", why).await;
            }
            init = Some(first.name_any());
        }
    }
    let hold_control_planes = waiting.is_some() && joined.is_empty();
    Ok(InitChoice {
        machine: init,
        waiting,
        hold_control_planes,
    })
}

/// Sets annotations of the PKI Secret, conditionally on the version read.
async fn annotate(
    api: &Api<Secret>,
    pki: &ObjectMeta,
    annotations: serde_json::Value,
) -> kube::Result<()> {
    let patch = json!({"metadata": {
        "annotations": annotations,
        "resourceVersion": pki.resource_version,
    }});
    api.patch(
        pki.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

/// Whether the cluster's control plane has initialized (its API answered).
fn initialized(c: &Cluster) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.initialization.as_ref())
        .is_some_and(|i| i.control_plane_initialized)
}

/// The cluster's name at the gateway: `<cluster>.<org>.<base-domain>`.
pub fn api_name(cfg: &Config, c: &Cluster) -> String {
    format!(
        "{}.{}.{}",
        c.name_any(),
        c.namespace().unwrap_or_default(),
        cfg.base_domain
    )
}
