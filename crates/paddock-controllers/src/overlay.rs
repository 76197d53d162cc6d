//! Overlay allocation: a VNI and a /24 per cluster, claimed as a `Lease`
//! named `overlay-<vni>` in `paddock-system`. Creating the claim is the
//! allocation (the API's create is atomic), so concurrent clusters never
//! share one; deleting it returns the pair to the pool.

use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use paddock_api::cluster::OverlayStatus;

use crate::Config;

pub const NAMESPACE: &str = "paddock-system";

fn claim_name(vni: u32) -> String {
    format!("overlay-{vni}")
}

/// The overlay of pool slot `idx`.
pub fn slot(cfg: &Config, idx: u32) -> OverlayStatus {
    let base = u32::from(cfg.subnet_base);
    let net = Ipv4Addr::from(base + (idx << 8));
    let gw = Ipv4Addr::from(base + (idx << 8) + paddock_api::cluster::GATEWAY_HOST_INDEX);
    OverlayStatus {
        vni: cfg.vni_base + idx,
        subnet: format!("{net}/24"),
        gateway: gw.to_string(),
        gateway_vtep: None,
        gateway_mac: None,
    }
}

/// The pool slots whose VNI no claim holds, lowest first. A claim is
/// deleted only once the cluster's VMs and devices are gone everywhere, so
/// a free slot has no VM or device of a previous owner left.
pub fn free_slots<'a>(
    cfg: &'a Config,
    taken: &'a std::collections::HashSet<u32>,
) -> impl Iterator<Item = u32> + 'a {
    (0..cfg.vni_count).filter(move |idx| !taken.contains(&(cfg.vni_base + idx)))
}

/// Marks the Leases that are overlay claims (claims made before the label
/// are still found by holder, and their names are still refused to others).
const CLAIM_LABEL: &str = "paddock.io/overlay";

/// The Leases `holder` holds.
fn holder_claims(holder: &str) -> ListParams {
    ListParams::default().fields(&format!("spec.holderIdentity={holder}"))
}

/// The VNI a Lease claims, if it is an overlay claim.
fn claim_vni(l: &Lease) -> Option<u32> {
    l.metadata
        .name
        .as_deref()
        .and_then(|n| n.strip_prefix("overlay-"))
        .and_then(|v| v.parse::<u32>().ok())
}

/// The overlay held by `holder` (a cluster uid), claiming the lowest free slot if none.
pub async fn ensure(
    client: &kube::Client,
    cfg: &Config,
    holder: &str,
) -> anyhow::Result<OverlayStatus> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    // The holder's own claim, by an indexed field; then the claims (by
    // label), not every Lease of every host.
    let held = api.list(&holder_claims(holder)).await?;
    if let Some(idx) = held
        .items
        .iter()
        .find_map(|l| claim_vni(l)?.checked_sub(cfg.vni_base))
    {
        return Ok(slot(cfg, idx));
    }
    let claims = api
        .list(&ListParams::default().labels(&format!("{CLAIM_LABEL}=claim")))
        .await?;
    let mut taken = std::collections::HashSet::new();
    taken.extend(claims.items.iter().filter_map(claim_vni));
    for idx in free_slots(cfg, &taken) {
        let vni = cfg.vni_base + idx;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(claim_name(vni)),
                labels: Some([(CLAIM_LABEL.to_owned(), "claim".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                ..Default::default()
            }),
        };
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(slot(cfg, idx)),
            // Someone else took it between our list and create: try the next.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "the overlay pool is exhausted ({} VNIs from {})",
        cfg.vni_count,
        cfg.vni_base
    )
}

/// Returns `holder`'s overlay to the pool.
pub async fn release(client: &kube::Client, holder: &str) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    for l in api.list(&holder_claims(holder)).await?.items {
        let name = l.metadata.name.clone().unwrap_or_default();
        if name.starts_with("overlay-")
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(holder)
        {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_a_vni_a_subnet_and_a_gateway() {
        let cfg = Config::default();
        let o = slot(&cfg, 0);
        assert_eq!(
            (o.vni, o.subnet.as_str(), o.gateway.as_str()),
            (1000, "10.64.0.0/24", "10.64.0.1")
        );
        let o = slot(&cfg, 257);
        assert_eq!((o.vni, o.subnet.as_str()), (1257, "10.65.1.0/24"));
    }

    #[test]
    fn the_lowest_unclaimed_slot_comes_first_and_the_pool_runs_out() {
        let cfg = Config {
            vni_count: 3,
            ..Config::default()
        };
        let taken: std::collections::HashSet<u32> = [1000, 1002].into();
        assert_eq!(free_slots(&cfg, &taken).collect::<Vec<_>>(), [1]);
        let all: std::collections::HashSet<u32> = [1000, 1001, 1002].into();
        assert_eq!(free_slots(&cfg, &all).next(), None);
        assert_eq!(
            free_slots(&cfg, &Default::default()).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }
}
