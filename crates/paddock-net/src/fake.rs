//! A fake host network, for unit tests of what drives [`HostNet`]: links,
//! forwarding entries and source guards kept in memory, with the kernel's
//! rules that matter to a caller (names are unique, a VXLAN device and a tap
//! need their bridge, deleting a bridge detaches its ports). It is a fake:
//! nothing reaches the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::guard::SourceGuard;
use crate::host::{HostNet, HostNetError};
use crate::{FdbEntry, Link, Mac, NetError};

/// One link of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub index: u32,
    pub mtu: u32,
    pub controller: Option<u32>,
    /// VXLAN devices: their VNI.
    pub vni: Option<u32>,
    /// Taps: the MAC their port is locked to.
    pub mac: Option<Mac>,
    /// VXLAN devices: their static entries.
    pub fdb: BTreeSet<FdbEntry>,
}

#[derive(Debug, Default)]
struct State {
    links: BTreeMap<String, FakeLink>,
    next_index: u32,
    guards: Vec<SourceGuard>,
    /// Links whose creation fails, as the kernel can refuse one.
    failing: std::collections::BTreeSet<String>,
}

/// The fake host network.
#[derive(Debug, Default)]
pub struct FakeNet {
    state: Mutex<State>,
}

impl FakeNet {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link named `name`, if it exists.
    pub fn link(&self, name: &str) -> Option<FakeLink> {
        self.lock().links.get(name).cloned()
    }

    /// Every link's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().links.keys().cloned().collect()
    }

    /// The source guards last applied.
    pub fn guards(&self) -> Vec<SourceGuard> {
        self.lock().guards.clone()
    }

    /// Makes creating (or changing) link `name` fail from now on.
    pub fn fail(&self, name: &str) {
        self.lock().failing.insert(name.to_owned());
    }

    /// Adds a link as something else on the host would have made it.
    pub fn add_foreign(&self, name: &str) {
        let mut s = self.lock();
        s.next_index += 1;
        let index = s.next_index;
        s.links.insert(
            name.to_owned(),
            FakeLink {
                index,
                mtu: 1500,
                controller: None,
                vni: None,
                mac: None,
                fdb: BTreeSet::new(),
            },
        );
    }

    fn ensure(
        &self,
        name: &str,
        mtu: u32,
        controller: Option<u32>,
        vni: Option<u32>,
        mac: Option<Mac>,
    ) -> Result<u32, HostNetError> {
        let mut s = self.lock();
        if s.failing.contains(name) {
            return Err(NetError::Missing(format!("{name} (made to fail by the fake)")).into());
        }
        if let Some(c) = controller
            && !s.links.values().any(|l| l.index == c)
        {
            return Err(NetError::Missing(format!("bridge with index {c}")).into());
        }
        if let Some(l) = s.links.get_mut(name) {
            l.mtu = mtu;
            l.controller = controller.or(l.controller);
            return Ok(l.index);
        }
        s.next_index += 1;
        let index = s.next_index;
        s.links.insert(
            name.to_owned(),
            FakeLink {
                index,
                mtu,
                controller,
                vni,
                mac,
                fdb: BTreeSet::new(),
            },
        );
        Ok(index)
    }
}

#[async_trait]
impl HostNet for FakeNet {
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, HostNetError> {
        self.ensure(name, mtu, None, None, None)
    }
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        _local: Ipv4Addr,
        bridge: u32,
        mtu: u32,
    ) -> Result<u32, HostNetError> {
        self.ensure(name, mtu, Some(bridge), Some(vni), None)
    }
    async fn sync_vxlan_fdb(
        &self,
        name: &str,
        vxlan: u32,
        want: &BTreeSet<FdbEntry>,
    ) -> Result<(), HostNetError> {
        let mut s = self.lock();
        match s.links.get_mut(name) {
            Some(l) if l.index == vxlan => {
                l.fdb = want.clone();
                Ok(())
            }
            _ => Err(NetError::Missing(name.to_owned()).into()),
        }
    }
    async fn ensure_tap(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        mac: Mac,
    ) -> Result<u32, HostNetError> {
        self.ensure(name, mtu, Some(bridge), None, Some(mac))
    }
    async fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(self
            .lock()
            .links
            .iter()
            .map(|(name, l)| Link {
                name: name.clone(),
                index: l.index,
                mtu: l.mtu,
                controller: l.controller,
            })
            .collect())
    }
    async fn delete(&self, name: &str) -> Result<(), HostNetError> {
        let mut s = self.lock();
        if let Some(gone) = s.links.remove(name) {
            for l in s.links.values_mut() {
                if l.controller == Some(gone.index) {
                    l.controller = None;
                }
            }
        }
        Ok(())
    }
    async fn apply_guards(&self, guards: &[SourceGuard]) -> Result<(), HostNetError> {
        self.lock().guards = guards.to_vec();
        Ok(())
    }
}
