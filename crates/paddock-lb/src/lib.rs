//! Load balancers in front of the management plane's ingress ports.
//!
//! For every workload cluster the gateway listens on two ports (HTTP and
//! HTTPS) that forward to the cluster's healthy workers. An external load
//! balancer takes the users' traffic to those ports. [`LoadBalancer`] is the
//! driver interface for one that is programmed through an API; [`haproxy`]
//! renders a ready configuration for HAProxy and [`haproxy::ConfigFile`]
//! keeps such a file current (and reloads HAProxy) as clusters come and go.

pub mod haproxy;

use async_trait::async_trait;
use kube::ResourceExt;
use paddock_api::Cluster;

/// One cluster's ingress as a load balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frontend {
    /// `<org>-<cluster>`: unique, and a valid HAProxy name.
    pub name: String,
    /// Where the gateway listens for this cluster.
    pub gateway_address: String,
    pub http_port: u16,
    pub https_port: u16,
}

impl Frontend {
    /// The frontend of a cluster whose ingress a gateway serves.
    pub fn of(c: &Cluster) -> Option<Self> {
        let ing = c.status.as_ref()?.ingress.as_ref()?;
        Some(Self {
            name: format!("{}-{}", c.namespace().unwrap_or_default(), c.name_any()),
            gateway_address: ing.address.clone()?,
            http_port: ing.http_port,
            https_port: ing.https_port,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("writing {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("reload command {command:?} failed: {detail}")]
    Reload { command: String, detail: String },
}

/// A load balancer that Paddock programs.
#[async_trait]
pub trait LoadBalancer: Send + Sync {
    /// Makes the load balancer serve exactly `frontends` (sorted, deduplicated).
    async fn sync(&self, frontends: &[Frontend]) -> Result<(), LbError>;
}
