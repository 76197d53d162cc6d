//! Authorization: who may touch what.
//!
//! Members of `system:masters` may do everything. Everyone else works
//! inside organizations: the group `org:<name>` grants, in namespace
//! `<name>`, every verb on Clusters and issuing their kubeconfigs; reading
//! Clusters' status, Machines and Events, and `exec`/`console` on its
//! Machines; and reading that Namespace object. What the platform writes
//! stays the platform's: status, Machines (made by the cluster controller),
//! Secrets (cluster CAs and bootstrap data) and Leases (overlay claims,
//! heartbeats) are not open to tenants, nor is anything cluster-wide (Hosts,
//! MachineImages, other namespaces, lists across all namespaces).

use http::Method;

use crate::auth::{ADMIN_GROUP, User};
use crate::error::ApiError;
use crate::route::Target;

/// The group prefix that makes a user a member of an organization.
pub const ORG_GROUP_PREFIX: &str = "org:";

/// The group that grants an organization.
pub fn org_group(org: &str) -> String {
    format!("{ORG_GROUP_PREFIX}{org}")
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }

    /// Whether the user belongs to organization `org`.
    pub fn in_org(&self, org: &str) -> bool {
        self.is_admin()
            || self
                .groups
                .iter()
                .any(|g| g.strip_prefix(ORG_GROUP_PREFIX) == Some(org))
    }
}

fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "access",
    }
}

/// Allows the request or says, in a 403, what was refused.
pub fn check(user: &User, t: &Target, method: &Method, watch: bool) -> Result<(), ApiError> {
    if user.is_admin() {
        return Ok(());
    }
    let plural = t.res.plural;
    let read = *method == Method::GET;
    let tenant_may = || match (t.res.group, plural) {
        _ if t.call.is_some() => true,
        (paddock_api::GROUP, "clusters") => read || !t.status,
        (paddock_api::GROUP, "machines") | ("", "events") | ("events.k8s.io", "events") => read,
        _ => false,
    };
    let allowed = match (t.res.namespaced, t.namespace.as_deref()) {
        (true, Some(ns)) => user.in_org(ns) && tenant_may(),
        // The Namespace object of one's own organization, read only.
        (false, _) if plural == "namespaces" && *method == Method::GET => {
            t.name.as_deref().is_some_and(|ns| user.in_org(ns))
        }
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let v = verb(method, t.name.is_some(), watch);
    let sub = if t.status { "/status" } else { "" };
    let what = match &t.name {
        Some(n) => format!("{plural}{sub} {n:?}"),
        None => plural.to_owned(),
    };
    let where_ = match (t.res.namespaced, t.namespace.as_deref()) {
        (true, Some(ns)) => format!(" in organization {ns:?}"),
        (true, None) => " across all organizations".to_owned(),
        _ => " (cluster-wide)".to_owned(),
    };
    Err(ApiError::Forbidden(format!(
        "user {:?} cannot {v} {what}{where_}",
        user.name
    )))
}
