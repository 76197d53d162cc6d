//! The cluster controller's PKI and bootstrap-data steps: the cluster's
//! `<cluster>-pki` Secret (made once, owned by the Cluster) and each
//! Machine's `<machine>-bootstrap` Secret (owned by the Machine, so it goes
//! with it).
//!
//! Exactly one Machine of a cluster runs `kubeadm init` at a time: the PKI
//! Secret's annotation [`INIT_MACHINE`] names it, set (conditionally on the
//! Secret's resourceVersion) before its bootstrap data is written. Once the
//! control plane has initialized (`status.initialization`, set by the
//! gateway when a control-plane VM first answers on the API port) a
//! replacement control-plane Machine joins, never re-initializes. If the
//! init Machine is gone before that — its host died during `kubeadm init` —
//! and no other control plane was given join data, a control-plane Machine
//! that has no bootstrap data yet (its replacement) is named instead, so the
//! cluster is not left waiting for a node that will never come; the switch
//! is recorded as an Event. If other control planes already wait to join,
//! a second init would split etcd: a Warning Event tells the operator.

use std::collections::BTreeMap;

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
) -> anyhow::Result<usize> {
    let missing: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter(|m| m.spec.bootstrap_secret.as_deref().is_some_and(|s| !have(s)))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let ns = c.namespace().unwrap_or_default();
    let cluster = c.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let existing: Vec<String> = api
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={cluster}")))
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
        return Ok(0);
    }
    let pki_secret = ensure_pki(client, c).await?;
    let pki = ClusterPki::from_data(&decoded(&pki_secret))?;

    // Which Machine initializes the cluster: named once, and named again
    // only if it is gone before the control plane initialized.
    let mut init = pki_secret.annotations().get(INIT_MACHINE).cloned();
    let live = |name: &str| {
        machines
            .iter()
            .any(|m| m.name_any() == name && m.metadata.deletion_timestamp.is_none())
    };
    let lost = init
        .as_deref()
        .filter(|name| !initialized(c) && !live(name))
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
    if let Some(gone) = lost.as_deref().filter(|_| !joined.is_empty()) {
        let why = format!(
            "init Machine {gone} is gone before the control plane initialized, and control planes {} wait to join it; delete them to initialize the cluster anew",
            joined.join(", ")
        );
        tracing::warn!(cluster = %cluster, org = %ns, "{why}");
        crate::events::record(client, c, true, "InitMachineLost", why).await;
    }
    let lost = lost.filter(|_| joined.is_empty());
    if init.is_none() || lost.is_some() {
        // A first pick may be any control plane; a new one must be a Machine
        // that has not been given join data.
        let mut cps: Vec<&Machine> = if lost.is_some() {
            missing.clone()
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
            let patch = json!({"metadata": {
                "annotations": {INIT_MACHINE: first.name_any()},
                "resourceVersion": pki_secret.resource_version(),
            }});
            api.patch(
                &pki_secret.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
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
    let overlay = c
        .status
        .as_ref()
        .and_then(|s| s.overlay.clone())
        .ok_or_else(|| anyhow::anyhow!("no overlay yet"))?;
    let gateway = overlay.gateway.parse()?;
    let mut made = 0;
    for m in missing {
        let (Some(secret_name), Some(address), Some(mac)) =
            (&m.spec.bootstrap_secret, &m.spec.ip, &m.spec.mac)
        else {
            continue;
        };
        let role = match m.spec.role {
            MachineRole::ControlPlane if init.as_deref() == Some(m.name_any().as_str()) => {
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
            cni_manifest: cfg.cni_manifest.clone(),
        };
        let data = paddock_bootstrap::render(&node, &pki)?;
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
        match api.create(&PostParams::default(), &s).await {
            Ok(_) => made += 1,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(made)
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
