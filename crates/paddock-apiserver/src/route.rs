//! Maps a request path onto a resource, a namespace, a name and a subresource.

use crate::error::ApiError;
use crate::resources::{self, Resource};

/// Where a resource request points.
#[derive(Debug)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
    /// A subresource that is an action, not stored state.
    pub call: Option<Call>,
}

impl Target {
    /// The request's verb as authorization names it (`get`, `list`,
    /// `watch`, `create`, …).
    pub fn verb(&self, method: &http::Method, watch: bool) -> &'static str {
        let named = self.name.is_some();
        match *method {
            http::Method::GET if watch => "watch",
            http::Method::GET if named => "get",
            http::Method::GET => "list",
            http::Method::POST => "create",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE if named => "delete",
            http::Method::DELETE => "deletecollection",
            _ => "access",
        }
    }

    /// The subresource's name, if the request is on one.
    pub fn subresource(&self) -> Option<&'static str> {
        match (self.status, self.call) {
            (true, _) => Some("status"),
            (_, Some(Call::Kubeconfig)) => Some("kubeconfig"),
            (_, Some(Call::Binding)) => Some("binding"),
            (_, Some(Call::Agent(a))) => Some(a.path()),
            _ => None,
        }
    }
}

/// Subresources that do something rather than read or write an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Passed on to the Machine's host agent.
    Agent(AgentCall),
    /// Issues a kubeconfig for a Cluster.
    Kubeconfig,
    /// Binds a Machine to a Host (the scheduler's one write per placement).
    Binding,
}

/// Machine subresources served by the host agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    Exec,
    Console,
}

impl AgentCall {
    pub fn path(self) -> &'static str {
        match self {
            AgentCall::Exec => "exec",
            AgentCall::Console => "console",
        }
    }
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.plural, self.group)
    }
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...`.
pub fn parse(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let find = |plural: &str| resources::find(group, version, plural).ok_or(ApiError::NoRoute);
    let owned = |s: &str| Some(s.to_owned());
    let t = match rest {
        [plural] => Target {
            res: find(plural)?,
            namespace: None,
            name: None,
            status: false,
            call: None,
        },
        ["namespaces", ns, "status"] if group.is_empty() => Target {
            res: find("namespaces")?,
            namespace: None,
            name: owned(ns),
            status: true,
            call: None,
        },
        ["namespaces", ns, plural] => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target {
                res,
                namespace: owned(ns),
                name: None,
                status: false,
                call: None,
            }
        }
        ["namespaces", ns, plural, name] => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target {
                res,
                namespace: owned(ns),
                name: owned(name),
                status: false,
                call: None,
            }
        }
        ["namespaces", ns, plural, name, "status"] => {
            let res = find(plural)?;
            if !res.namespaced || !res.status_subresource {
                return Err(ApiError::NoRoute);
            }
            Target {
                res,
                namespace: owned(ns),
                name: owned(name),
                status: true,
                call: None,
            }
        }
        [
            "namespaces",
            ns,
            "machines",
            name,
            call @ ("exec" | "console"),
        ] if group == paddock_api::GROUP => Target {
            res: find("machines")?,
            namespace: owned(ns),
            name: owned(name),
            status: false,
            call: Some(Call::Agent(if *call == "exec" {
                AgentCall::Exec
            } else {
                AgentCall::Console
            })),
        },
        ["namespaces", ns, "machines", name, "binding"] if group == paddock_api::GROUP => Target {
            res: find("machines")?,
            namespace: owned(ns),
            name: owned(name),
            status: false,
            call: Some(Call::Binding),
        },
        ["namespaces", ns, "clusters", name, "kubeconfig"] if group == paddock_api::GROUP => {
            Target {
                res: find("clusters")?,
                namespace: owned(ns),
                name: owned(name),
                status: false,
                call: Some(Call::Kubeconfig),
            }
        }
        [plural, name] => {
            let res = find(plural)?;
            if res.namespaced {
                return Err(ApiError::NoRoute);
            }
            Target {
                res,
                namespace: None,
                name: owned(name),
                status: false,
                call: None,
            }
        }
        [plural, name, "status"] => {
            let res = find(plural)?;
            if res.namespaced || !res.status_subresource {
                return Err(ApiError::NoRoute);
            }
            Target {
                res,
                namespace: None,
                name: owned(name),
                status: true,
                call: None,
            }
        }
        _ => return Err(ApiError::NoRoute),
    };
    if t.name.as_deref().is_some_and(str::is_empty)
        || t.namespace.as_deref().is_some_and(str::is_empty)
    {
        return Err(ApiError::NoRoute);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = parse("/apis/paddock.io/v1alpha1/namespaces/acme/clusters/demo/status").unwrap();
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            ("clusters", Some("acme"), Some("demo"), true)
        );
        let t = parse("/apis/paddock.io/v1alpha1/clusters").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse("/api/v1/namespaces/acme").unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("acme"))
        );
        let t = parse("/api/v1/namespaces/acme/status").unwrap();
        assert!(t.status);
        let t = parse("/apis/paddock.io/v1alpha1/hosts/h1").unwrap();
        assert_eq!(t.name.as_deref(), Some("h1"));
        assert!(parse("/apis/paddock.io/v1alpha1/namespaces/a/hosts").is_err());
        assert!(parse("/apis/paddock.io/v1alpha1/clusters/x").is_err());
        assert!(parse("/apis/paddock.io/v1/clusters").is_err());
        assert!(parse("/apis/paddock.io/v1alpha1/machineimages/x/status").is_err());
    }
}
