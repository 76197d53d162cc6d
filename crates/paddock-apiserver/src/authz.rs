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
//!
//! A host agent's credential (user `host:<name>`, group `paddock:hosts`)
//! acts for that one host, as Kubernetes' node authorizer does for kubelets:
//! it reads Hosts, Machines, Clusters and MachineImages (what it needs to
//! run VMs and program overlays), registers its own Host (without BMC
//! settings) and writes its status, renews its own Lease, writes the status
//! of Machines bound to it, and reads the bootstrap Secret of those Machines
//! — no other Secret. A compromised host thus holds the CA keys only of
//! clusters whose control planes it runs (kubeadm needs them there) and no
//! other host's bootstrap data. Whether a Machine is bound to the host is
//! read from the store, so such requests are allowed on a [`Condition`]
//! that [`holds`] checks.

use http::Method;

use serde_json::Value;

use crate::api::{Api, ListOptions};
use crate::auth::{ADMIN_GROUP, User};
use crate::error::{ApiError, ApiResult};
use crate::route::Target;
use crate::selector::FieldSelector;

/// The group prefix that makes a user a member of an organization.
pub const ORG_GROUP_PREFIX: &str = "org:";

/// The group of host agents' credentials.
pub const HOSTS_GROUP: &str = "paddock:hosts";

/// A host credential's user is this prefix and the host's name.
pub const HOST_USER_PREFIX: &str = "host:";

/// The user name of host `host`'s credential.
pub fn host_user(host: &str) -> String {
    format!("{HOST_USER_PREFIX}{host}")
}

/// The group that grants an organization.
pub fn org_group(org: &str) -> String {
    format!("{ORG_GROUP_PREFIX}{org}")
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }

    /// The host this user acts for, if it holds a host credential.
    pub fn host(&self) -> Option<&str> {
        if !self.groups.iter().any(|g| g == HOSTS_GROUP) {
            return None;
        }
        self.name
            .strip_prefix(HOST_USER_PREFIX)
            .filter(|h| !h.is_empty())
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

/// What decides a request that the request alone cannot: a host may touch
/// some objects only if they are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A create, allowed if the new object is named `name` and claims no
    /// ownership (see [`Condition::ClaimsNoOwnership`]).
    CreatesNamed(String),
    /// A write, allowed if it sets no finalizers and no owner references:
    /// through them an object can hold up other objects' deletion.
    ClaimsNoOwnership,
    /// A host registering itself: allowed if the new Host is named `name`
    /// and carries no BMC settings (they name the credentials the platform
    /// will send to that BMC address).
    RegistersHost(String),
    /// Allowed if Machine `namespace/name` is bound to `host`.
    MachineOnHost {
        host: String,
        namespace: String,
        name: String,
    },
    /// Allowed if Secret `namespace/name` is the bootstrap Secret of a
    /// Machine bound to `host`.
    BootstrapSecretOf {
        host: String,
        namespace: String,
        name: String,
    },
}

impl Condition {
    /// Why the request was refused when the condition did not hold.
    fn unmet(&self) -> String {
        match self {
            Condition::CreatesNamed(name) => {
                format!("a host may only create {name:?}, without finalizers or owner references")
            }
            Condition::ClaimsNoOwnership => {
                "a host may not set finalizers or owner references".to_owned()
            }
            Condition::RegistersHost(name) => {
                format!(
                    "a host may only register itself, as {name:?}, without BMC settings, finalizers or owner references"
                )
            }
            Condition::MachineOnHost { host, .. } => {
                format!("the Machine is not bound to host {host:?}")
            }
            Condition::BootstrapSecretOf { host, .. } => {
                format!("it is not the bootstrap Secret of a Machine bound to host {host:?}")
            }
        }
    }
}

/// The outcome of [`check`] for a request it does not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed if the condition [`holds`].
    AllowIf(Condition),
}

/// Allows the request, allows it on a condition, or says, in a 403, what
/// was refused.
pub fn check(user: &User, t: &Target, method: &Method, watch: bool) -> Result<Decision, ApiError> {
    if user.is_admin() {
        return Ok(Decision::Allow);
    }
    let decision = match user.host() {
        Some(host) => host_may(host, t, method),
        None => tenant_may(user, t, method).then_some(Decision::Allow),
    };
    decision.ok_or_else(|| forbidden(user, t, method, watch, None))
}

/// Whether `cond` holds; `body` gives the request's object (for creates).
pub async fn holds(
    api: &Api,
    cond: &Condition,
    body: impl FnOnce() -> ApiResult<Value>,
) -> ApiResult<bool> {
    let bound_to = |m: &Value, host: &str| m["spec"]["hostName"].as_str() == Some(host);
    match cond {
        Condition::CreatesNamed(name) => {
            let b = body()?;
            Ok(b["metadata"]["name"].as_str() == Some(name.as_str()) && !claims_ownership(&b))
        }
        Condition::ClaimsNoOwnership => Ok(!claims_ownership(&body()?)),
        Condition::RegistersHost(name) => {
            let b = body()?;
            Ok(b["metadata"]["name"].as_str() == Some(name.as_str())
                && b["spec"]["bmc"].is_null()
                && !claims_ownership(&b))
        }
        Condition::MachineOnHost {
            host,
            namespace,
            name,
        } => match api.get(machines(), Some(namespace), name).await {
            Ok(m) => Ok(bound_to(&m, host)),
            Err(ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        },
        Condition::BootstrapSecretOf {
            host,
            namespace,
            name,
        } => {
            let res = machines();
            let opts = ListOptions {
                fields: FieldSelector::parse(&format!("spec.hostName={host}"), res.field_labels)
                    .map_err(ApiError::Internal)?,
                ..ListOptions::default()
            };
            let page = api.list(res, Some(namespace), &opts).await?;
            Ok(page.items.iter().any(|m| {
                bound_to(m, host) && m["spec"]["bootstrapSecret"].as_str() == Some(name.as_str())
            }))
        }
    }
}

/// Whether a request body — an object, a merge patch or a JSON patch —
/// sets finalizers or owner references.
fn claims_ownership(body: &Value) -> bool {
    const FIELDS: [&str; 2] = ["finalizers", "ownerReferences"];
    match body {
        Value::Array(ops) => ops.iter().any(|op| {
            let path = op["path"].as_str().unwrap_or_default();
            path == "/metadata"
                || FIELDS
                    .iter()
                    .any(|f| path.starts_with(&format!("/metadata/{f}")))
        }),
        _ => FIELDS.iter().any(|f| match &body["metadata"][f] {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }),
    }
}

/// Refuses the request in a 403 naming user, verb, object and, for a
/// condition that did not hold, why.
pub fn forbidden(
    user: &User,
    t: &Target,
    method: &Method,
    watch: bool,
    unmet: Option<&Condition>,
) -> ApiError {
    let plural = t.res.plural;
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
    let why = unmet
        .map(|c| format!(": {}", c.unmet()))
        .unwrap_or_default();
    ApiError::Forbidden(format!(
        "user {:?} cannot {v} {what}{where_}{why}",
        user.name
    ))
}

fn machines() -> &'static crate::resources::Resource {
    crate::resources::find(paddock_api::GROUP, paddock_api::VERSION, "machines")
        .expect("machines are a served resource")
}

/// What a tenant may do: see the module's documentation.
fn tenant_may(user: &User, t: &Target, method: &Method) -> bool {
    let plural = t.res.plural;
    let read = *method == Method::GET;
    let in_org = || match (t.res.group, plural) {
        _ if t.call.is_some() => true,
        (paddock_api::GROUP, "clusters") => read || !t.status,
        (paddock_api::GROUP, "machines") | ("", "events") | ("events.k8s.io", "events") => read,
        _ => false,
    };
    match (t.res.namespaced, t.namespace.as_deref()) {
        (true, Some(ns)) => user.in_org(ns) && in_org(),
        // The Namespace object of one's own organization, read only.
        (false, _) if plural == "namespaces" && *method == Method::GET => {
            t.name.as_deref().is_some_and(|ns| user.in_org(ns))
        }
        _ => false,
    }
}

/// What host `host`'s agent may do: see the module's documentation.
fn host_may(host: &str, t: &Target, method: &Method) -> Option<Decision> {
    if t.call.is_some() {
        return None;
    }
    let read = *method == Method::GET;
    let write = matches!(*method, Method::PUT | Method::PATCH);
    let name = t.name.as_deref();
    let ns = t.namespace.as_deref();
    let allow = Some(Decision::Allow);
    match (t.res.group, t.res.plural) {
        (paddock_api::GROUP, "hosts" | "machines" | "clusters" | "machineimages") if read => allow,
        (paddock_api::GROUP, "hosts") if *method == Method::POST && name.is_none() => {
            Some(Decision::AllowIf(Condition::RegistersHost(host.to_owned())))
        }
        (paddock_api::GROUP, "hosts") if write && t.status && name == Some(host) => allow,
        (paddock_api::GROUP, "machines") if write && t.status => {
            Some(Decision::AllowIf(Condition::MachineOnHost {
                host: host.to_owned(),
                namespace: ns?.to_owned(),
                name: name?.to_owned(),
            }))
        }
        ("coordination.k8s.io", "leases") if ns == Some(paddock_api::host::SYSTEM_NAMESPACE) => {
            let lease = paddock_api::host::lease_name(host);
            match name {
                Some(n) if n == lease && read => allow,
                Some(n) if n == lease && write => {
                    Some(Decision::AllowIf(Condition::ClaimsNoOwnership))
                }
                None if *method == Method::POST => {
                    Some(Decision::AllowIf(Condition::CreatesNamed(lease)))
                }
                _ => None,
            }
        }
        ("", "secrets") if read && !t.status => {
            Some(Decision::AllowIf(Condition::BootstrapSecretOf {
                host: host.to_owned(),
                namespace: ns?.to_owned(),
                name: name?.to_owned(),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn a_host_credential_needs_both_the_group_and_the_name() {
        assert_eq!(user("host:h1", &[HOSTS_GROUP]).host(), Some("h1"));
        assert_eq!(user("host:h1", &["org:acme"]).host(), None);
        assert_eq!(user("h1", &[HOSTS_GROUP]).host(), None);
        assert_eq!(user("host:", &[HOSTS_GROUP]).host(), None);
    }

    #[test]
    fn a_host_may_not_call_machine_subresources() {
        let t = crate::route::parse("/apis/paddock.io/v1alpha1/namespaces/acme/machines/m1/exec")
            .expect("route");
        let h1 = user("host:h1", &[HOSTS_GROUP]);
        assert!(check(&h1, &t, &Method::POST, false).is_err());
        let t = crate::route::parse("/apis/paddock.io/v1alpha1/namespaces/acme/machines/m1/status")
            .expect("route");
        assert_eq!(
            check(&h1, &t, &Method::PATCH, false).expect("conditional"),
            Decision::AllowIf(Condition::MachineOnHost {
                host: "h1".into(),
                namespace: "acme".into(),
                name: "m1".into()
            })
        );
    }
}
