//! Overlay allocation: a VNI and a /24 per cluster, claimed as a `Lease`
//! named `overlay-<vni>` in `paddock-system`. Creating the claim is the
//! allocation (the API's create is atomic), so concurrent clusters never
//! share one; deleting it returns the pair to the pool. Free slots are
//! found in a watched cache of the claims.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
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

/// The pool as this controller sees it: the claims its watch last saw, and
/// those it made that the watch has not shown yet. A free slot is found by
/// lookups in this cache, not by listing every claim: at 10,000 clusters a
/// list of every claim per new cluster made cluster creation quadratic.
pub struct Pool {
    claims: reflector::Store<Lease>,
    /// VNIs claimed here that the cache did not show yet.
    mine: Mutex<HashSet<u32>>,
}

impl Pool {
    /// Watches the claims (by label) and returns the pool once the cache
    /// is filled, or None if the watch never started.
    pub async fn watch(client: &kube::Client, keep: &mut paddock_watch::Watchers) -> Option<Self> {
        let claims = keep.store_selected(
            Api::<Lease>::namespaced(client.clone(), NAMESPACE),
            watcher::Config::default().labels(&format!("{CLAIM_LABEL}=claim")),
            Arc::default(),
        );
        claims.wait_until_ready().await.ok()?;
        Some(Self {
            claims,
            mine: Mutex::default(),
        })
    }

    /// Whether `vni` is claimed, as far as this controller knows.
    fn taken(&self, vni: u32) -> bool {
        let cached = self
            .claims
            .get(&ObjectRef::new(&claim_name(vni)).within(NAMESPACE))
            .is_some();
        let Ok(mut mine) = self.mine.lock() else {
            return cached;
        };
        if cached {
            // The cache shows it now; from here on it alone says.
            mine.remove(&vni);
            return true;
        }
        mine.contains(&vni)
    }

    /// Takes `vni` for a claim about to be made here, unless it is taken:
    /// concurrent reconciles of this controller then try different slots
    /// instead of racing for the lowest free one.
    fn reserve(&self, vni: u32) -> bool {
        if self.taken(vni) {
            return false;
        }
        match self.mine.lock() {
            Ok(mut mine) => mine.insert(vni),
            Err(_) => true,
        }
    }

    fn claimed(&self, vni: u32, yes: bool) {
        if let Ok(mut mine) = self.mine.lock() {
            if yes {
                mine.insert(vni);
            } else {
                mine.remove(&vni);
            }
        }
    }
}

/// The overlay held by `holder` (a cluster uid), claiming the lowest free
/// slot if none.
pub async fn ensure(
    client: &kube::Client,
    cfg: &Config,
    pool: &Pool,
    holder: &str,
) -> anyhow::Result<OverlayStatus> {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    // The holder's own claim, by an indexed field (a claim made just now may
    // not be in the cache yet).
    let held = api.list(&holder_claims(holder)).await?;
    if let Some(idx) = held
        .items
        .iter()
        .find_map(|l| claim_vni(l)?.checked_sub(cfg.vni_base))
    {
        return Ok(slot(cfg, idx));
    }
    for idx in 0..cfg.vni_count {
        let vni = cfg.vni_base + idx;
        if !pool.reserve(vni) {
            continue;
        }
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
        // The create is the allocation: a claim the cache does not show yet
        // (or one made before the label) answers 409, and the next is tried.
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(slot(cfg, idx)),
            // Someone's: it stays taken here until the cache shows it.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                pool.claimed(vni, false);
                return Err(e.into());
            }
        }
    }
    anyhow::bail!(
        "the overlay pool is exhausted ({} VNIs from {})",
        cfg.vni_count,
        cfg.vni_base
    )
}

/// Returns `holder`'s overlay to the pool.
pub async fn release(client: &kube::Client, pool: &Pool, holder: &str) -> anyhow::Result<()> {
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
            if let Some(vni) = claim_vni(&l) {
                pool.claimed(vni, false);
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
}
