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
//! MachineImages, other namespaces, lists across all namespaces); the
//! Kubernetes versions there are images for are at
//! `/paddock/v1/kubernetes-versions`, for every user.
//!
//! A host agent's credential (user `host:<name>`, group `paddock:hosts`)
//! acts for that one host, as Kubernetes' node authorizer does for kubelets:
//! it reads Hosts, Machines, Clusters and MachineImages (what it needs to
//! run VMs and program overlays), registers its own Host (without BMC
//! settings) and writes its status, renews its own Lease, writes the status
//! of Machines bound to it, and reads the bootstrap Secret of those Machines
//! — no other Secret. A compromised host thus holds the CA keys only of
//! clusters whose control planes it runs (kubeadm needs them there) and no
//! other host's bootstrap data. Once a Machine bound to it is deleted and
//! its VM is gone, it removes the Machine's [`VM_FINALIZER`] (and changes
//! nothing else). Whether a Machine is bound to the host is read from the
//! store, so such requests are allowed on a [`Condition`]: reads on one that
//! [`holds`] looks up first, writes on one that [`admits`] decides on the
//! object as it would be stored — whatever the shape of the request (a
//! merge patch, a JSON patch replacing the whole document, a PUT).
//!
//! [`VM_FINALIZER`]: paddock_api::machine::VM_FINALIZER

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

/// What decides a request that the request alone cannot: a host may touch
/// some objects only if they are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A create, allowed if the new object is named `name` and claims no
    /// ownership (see [`Condition::ClaimsNoOwnership`]).
    CreatesNamed(String),
    /// A write, allowed if the stored object gains no finalizers and no
    /// owner references: through them an object can hold up other objects'
    /// deletion.
    ClaimsNoOwnership,
    /// A host registering itself: allowed if the new Host is named `name`
    /// and carries no BMC settings (they name the credentials the platform
    /// will send to that BMC address).
    RegistersHost(String),
    /// A status write, allowed if the Machine written is bound to `host`.
    MachineOnHost { host: String },
    /// A write to a deleted Machine bound to `host` that only removes its
    /// [`paddock_api::machine::VM_FINALIZER`].
    ReleasesMachine { host: String },
    /// A read, allowed if Secret `namespace/name` is the bootstrap Secret of
    /// a Machine bound to `host`.
    BootstrapSecretOf {
        host: String,
        namespace: String,
        name: String,
    },
}

impl Condition {
    /// Why the request was refused when the condition did not hold.
    pub fn unmet(&self) -> String {
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
            Condition::MachineOnHost { host } => {
                format!("the Machine is not bound to host {host:?}")
            }
            Condition::ReleasesMachine { host } => format!(
                "a host may only remove the finalizer {:?} of a Machine bound to it (host {host:?}), and change nothing else",
                paddock_api::machine::VM_FINALIZER
            ),
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

impl Condition {
    /// Whether [`holds`] decides it before the request runs (reads);
    /// otherwise [`admits`] decides on the object the write would store.
    pub fn is_lookup(&self) -> bool {
        matches!(self, Condition::BootstrapSecretOf { .. })
    }
}

/// Whether a lookup condition holds (see [`Condition::is_lookup`]); write
/// conditions are left to [`admits`] and hold here.
pub async fn holds(api: &Api, cond: &Condition) -> ApiResult<bool> {
    let Condition::BootstrapSecretOf {
        host,
        namespace,
        name,
    } = cond
    else {
        return Ok(true);
    };
    let res = machines();
    let opts = ListOptions {
        fields: FieldSelector::parse(&format!("spec.hostName={host}"), res.field_labels)
            .map_err(ApiError::Internal)?,
        ..ListOptions::default()
    };
    let page = api.list(res, Some(namespace), &opts).await?;
    Ok(page
        .items
        .iter()
        .any(|m| bound_to(m, host) && m["spec"]["bootstrapSecret"].as_str() == Some(name.as_str())))
}

fn bound_to(m: &Value, host: &str) -> bool {
    m["spec"]["hostName"].as_str() == Some(host)
}

/// Whether a write condition admits storing `new` in place of `old` (none
/// for a create). Decided on whole objects, after the patch is applied.
pub fn admits(cond: &Condition, old: Option<&Value>, new: &Value) -> bool {
    let named = |name: &str| new["metadata"]["name"].as_str() == Some(name);
    match cond {
        Condition::CreatesNamed(name) => old.is_none() && named(name) && !claims(old, new),
        Condition::ClaimsNoOwnership => !claims(old, new),
        Condition::RegistersHost(name) => {
            old.is_none() && named(name) && new["spec"]["bmc"].is_null() && !claims(old, new)
        }
        Condition::MachineOnHost { host } => {
            old.is_some_and(|o| bound_to(o, host)) && bound_to(new, host) && !claims(old, new)
        }
        Condition::ReleasesMachine { host } => {
            let Some(old) = old else { return false };
            let (before, after) = (
                crate::object::finalizers(old),
                crate::object::finalizers(new),
            );
            let only_released = after.iter().all(|f| before.contains(f))
                && before
                    .iter()
                    .all(|f| after.contains(f) || f == paddock_api::machine::VM_FINALIZER);
            let rest = |v: &Value| {
                let mut v = crate::object::without_rv(v);
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("finalizers");
                }
                v
            };
            // Only once the Machine is being deleted: a live Machine's
            // finalizer is what makes its deletion wait for the VM.
            crate::object::is_deleting(old)
                && bound_to(old, host)
                && only_released
                && rest(old) == rest(new)
        }
        Condition::BootstrapSecretOf { .. } => false,
    }
}

/// Whether `new` has a finalizer or an owner reference that `old` did not.
fn claims(old: Option<&Value>, new: &Value) -> bool {
    ["finalizers", "ownerReferences"].iter().any(|f| {
        let had = old
            .and_then(|o| o["metadata"][f].as_array().cloned())
            .unwrap_or_default();
        match &new["metadata"][f] {
            Value::Null => false,
            Value::Array(a) => a.iter().any(|x| !had.contains(x)),
            _ => true,
        }
    })
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
    let v = t.verb(method, watch);
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
        // Where a Machine runs is the scheduler's to say.
        _ if t.call == Some(crate::route::Call::Binding) => false,
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
        (paddock_api::GROUP, "machines") if write && name.is_some() => {
            Some(Decision::AllowIf(if t.status {
                Condition::MachineOnHost {
                    host: host.to_owned(),
                }
            } else {
                Condition::ReleasesMachine {
                    host: host.to_owned(),
                }
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
            Decision::AllowIf(Condition::MachineOnHost { host: "h1".into() })
        );
    }

    #[test]
    fn tenants_touch_nothing_cluster_wide() {
        let alice = user("alice", &["org:acme"]);
        let images = crate::route::parse("/apis/paddock.io/v1alpha1/machineimages").expect("route");
        assert!(check(&alice, &images, &Method::GET, true).is_err());
        assert!(check(&alice, &images, &Method::POST, false).is_err());
        let one =
            crate::route::parse("/apis/paddock.io/v1alpha1/machineimages/dev").expect("route");
        for m in [Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(check(&alice, &one, &m, false).is_err(), "{m}");
        }
        let hosts = crate::route::parse("/apis/paddock.io/v1alpha1/hosts").expect("route");
        assert!(check(&alice, &hosts, &Method::GET, false).is_err());
    }

    fn lease(fins: &[&str]) -> Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "host-h1", "namespace": "paddock-system", "finalizers": fins},
            "spec": {"holderIdentity": "host-h1"}
        })
    }

    fn machine(host: &str, fins: &[&str], cpu: u32) -> Value {
        serde_json::json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m1", "namespace": "acme", "finalizers": fins, "resourceVersion": "7"},
            "spec": {"hostName": host, "cpu": cpu}
        })
    }

    #[test]
    fn ownership_is_judged_on_the_stored_object() {
        let c = Condition::ClaimsNoOwnership;
        let old = lease(&[]);
        // Whatever patch produced it: a whole-document replace, a move, a copy.
        assert!(!admits(&c, Some(&old), &lease(&["example.com/hold"])));
        let mut owned = lease(&[]);
        owned["metadata"]["ownerReferences"] = serde_json::json!([{"uid": "0000"}]);
        assert!(!admits(&c, Some(&old), &owned));
        assert!(admits(&c, Some(&old), &lease(&[])));
        // Keeping or dropping what was there already is no new claim.
        let held = lease(&["example.com/hold"]);
        assert!(admits(&c, Some(&held), &held));
        assert!(admits(&c, Some(&held), &lease(&[])));
        let create = Condition::CreatesNamed("host-h1".into());
        assert!(admits(&create, None, &lease(&[])));
        assert!(!admits(&create, None, &lease(&["example.com/hold"])));
        assert!(!admits(&create, Some(&old), &lease(&[])));
    }

    #[test]
    fn a_host_releases_only_the_vm_finalizer_of_its_own_machines() {
        let vm = paddock_api::machine::VM_FINALIZER;
        let c = Condition::ReleasesMachine { host: "h1".into() };
        let live = machine("h1", &[vm, "example.com/other"], 1);
        assert!(
            !admits(&c, Some(&live), &machine("h1", &["example.com/other"], 1)),
            "not while the Machine lives"
        );
        let mut old = live.clone();
        old["metadata"]["deletionTimestamp"] = serde_json::json!("2026-12-01T00:00:00Z");
        let deleted = |host: &str, fins: &[&str], cpu: u32| {
            let mut m = machine(host, fins, cpu);
            m["metadata"]["deletionTimestamp"] = serde_json::json!("2026-12-01T00:00:00Z");
            m
        };
        assert!(admits(
            &c,
            Some(&old),
            &deleted("h1", &["example.com/other"], 1)
        ));
        // Another finalizer, a change besides, another host's Machine.
        assert!(!admits(&c, Some(&old), &deleted("h1", &[vm], 1)));
        assert!(!admits(
            &c,
            Some(&old),
            &deleted("h1", &["example.com/other"], 2)
        ));
        assert!(!admits(
            &c,
            Some(&old),
            &deleted("h2", &["example.com/other"], 1)
        ));
        let theirs = deleted("h2", &[vm], 1);
        assert!(!admits(&c, Some(&theirs), &deleted("h2", &[], 1)));
        assert!(!admits(&c, None, &deleted("h1", &[], 1)));
        let status = Condition::MachineOnHost { host: "h1".into() };
        assert!(admits(&status, Some(&old), &old));
        assert!(!admits(&status, Some(&theirs), &theirs));
    }
}
