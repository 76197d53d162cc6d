//! The host network as the agent sees it: the operations its reconciler
//! takes, behind a trait, so that the reconciler runs against the kernel
//! ([`Net`], netlink and nftables) or against [`crate::fake::FakeNet`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use async_trait::async_trait;

use crate::guard::{self, GuardError, SourceGuard};
use crate::{FdbEntry, Link, Mac, Net, NetError};

/// Why a host network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Guard(#[from] GuardError),
}

/// What the agent does to a host's network.
#[async_trait]
pub trait HostNet: Send + Sync + 'static {
    /// A bridge, up, with `mtu`; its index.
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, HostNetError>;
    /// A VXLAN device of `vni` from VTEP `local`, on `bridge`; its index.
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        bridge: u32,
        mtu: u32,
    ) -> Result<u32, HostNetError>;
    /// Makes the device's static forwarding entries exactly `want`.
    async fn sync_vxlan_fdb(
        &self,
        name: &str,
        vxlan: u32,
        want: &BTreeSet<FdbEntry>,
    ) -> Result<(), HostNetError>;
    /// A VM's tap on `bridge`, locked to `mac`; its index.
    async fn ensure_tap(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        mac: Mac,
    ) -> Result<u32, HostNetError>;
    /// Every link on the host.
    async fn links(&self) -> Result<Vec<Link>, HostNetError>;
    /// Removes a link (gone already is fine).
    async fn delete(&self, name: &str) -> Result<(), HostNetError>;
    /// Makes the source guards exactly `guards`.
    async fn apply_guards(&self, guards: &[SourceGuard]) -> Result<(), HostNetError>;
}

#[async_trait]
impl HostNet for Net {
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32, HostNetError> {
        Ok(Net::ensure_bridge(self, name, mtu).await?)
    }
    async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        bridge: u32,
        mtu: u32,
    ) -> Result<u32, HostNetError> {
        Ok(Net::ensure_vxlan(self, name, vni, local, bridge, mtu).await?)
    }
    async fn sync_vxlan_fdb(
        &self,
        name: &str,
        vxlan: u32,
        want: &BTreeSet<FdbEntry>,
    ) -> Result<(), HostNetError> {
        Ok(Net::sync_vxlan_fdb(self, name, vxlan, want).await?)
    }
    async fn ensure_tap(
        &self,
        name: &str,
        bridge: u32,
        mtu: u32,
        mac: Mac,
    ) -> Result<u32, HostNetError> {
        Ok(Net::ensure_tap(self, name, bridge, mtu, mac).await?)
    }
    async fn links(&self) -> Result<Vec<Link>, HostNetError> {
        Ok(Net::links(self).await?)
    }
    async fn delete(&self, name: &str) -> Result<(), HostNetError> {
        Ok(Net::delete(self, name).await?)
    }
    async fn apply_guards(&self, guards: &[SourceGuard]) -> Result<(), HostNetError> {
        Ok(guard::apply(guards).await?)
    }
}
