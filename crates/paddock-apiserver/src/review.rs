//! Access reviews, as Kubernetes serves them: who the caller is
//! (`SelfSubjectReview`, for `kubectl auth whoami`) and whether a user may
//! do something (`SelfSubjectAccessReview`, for `kubectl auth can-i`, and
//! `SubjectAccessReview`, for admins asking about anyone). The answers come
//! from the same [`authz::check`] that decides real requests, so they cannot
//! drift from what the server enforces.
//!
//! Where a request is allowed only on a condition about the object (a
//! host's writes to Machines bound to it), a lookup condition is evaluated
//! when the review names the object; a write condition, which is decided on
//! the object a write would store, is answered "no" with the condition as
//! the reason: a review never says yes to what the server could refuse.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use paddock_api::{FieldError, FieldErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::User;
use crate::authz::{self, Decision};
use crate::error::{ApiError, ApiResult, Subject};
use crate::resources::{self, Resource};
use crate::route::{AgentCall, Call, Target};

pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
pub const VERSION: &str = "v1";

/// A create-only review resource, as discovery lists it.
#[derive(Debug, Clone, Copy)]
pub struct ReviewKind {
    pub group: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
}

/// The review resources served.
pub const KINDS: [ReviewKind; 3] = [
    ReviewKind {
        group: AUTHORIZATION_GROUP,
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
    },
    ReviewKind {
        group: AUTHORIZATION_GROUP,
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
    },
    ReviewKind {
        group: AUTHENTICATION_GROUP,
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
    },
];

/// `spec.resourceAttributes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResourceAttributes {
    pub namespace: String,
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// `spec.nonResourceAttributes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NonResourceAttributes {
    pub path: String,
    pub verb: String,
}

/// The spec of either access review; `user` and `groups` only in a
/// `SubjectAccessReview`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    resource_attributes: Option<ResourceAttributes>,
    non_resource_attributes: Option<NonResourceAttributes>,
    user: String,
    groups: Vec<String>,
}

/// What the review asks about, once validated.
#[derive(Debug, Clone)]
pub enum Question {
    Resource(ResourceAttributes),
    NonResource(NonResourceAttributes),
}

/// The authorizer's answer, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(String),
    NotAllowed(String),
    /// Allowed if a lookup in the store finds the object is the user's.
    IfHolds(authz::Condition),
}

/// The paths any authenticated user may read: discovery, the OpenAPI
/// documents, the version and the health checks (Kubernetes'
/// `system:discovery` and `system:public-info-viewer`).
const PUBLIC_PATHS: [&str; 10] = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/openapi",
    "/openapi/*",
    "/healthz",
    "/livez",
    "/readyz",
];

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern || path.strip_suffix('/') == Some(pattern),
    }
}

/// The request method (and whether it watches) a Kubernetes verb stands
/// for; `None` for verbs no request of Paddock's performs.
fn method_of(verb: &str) -> Option<(Method, bool)> {
    Some(match verb {
        "get" | "list" => (Method::GET, false),
        "watch" => (Method::GET, true),
        "create" => (Method::POST, false),
        "update" => (Method::PUT, false),
        "patch" => (Method::PATCH, false),
        "delete" | "deletecollection" => (Method::DELETE, false),
        _ => return None,
    })
}

fn resource_of(a: &ResourceAttributes) -> Option<&'static Resource> {
    let any_version = a.version.is_empty() || a.version == "*";
    resources::RESOURCES.iter().find(|r| {
        r.group == a.group && r.plural == a.resource && (any_version || r.version == a.version)
    })
}

/// The subresource as the router would have parsed it: `(status, call)`.
fn subresource_of(res: &Resource, sub: &str) -> Option<(bool, Option<Call>)> {
    let machines = res.group == paddock_api::GROUP && res.plural == "machines";
    let clusters = res.group == paddock_api::GROUP && res.plural == "clusters";
    match sub {
        "" => Some((false, None)),
        "status" if res.status_subresource => Some((true, None)),
        "exec" if machines => Some((false, Some(Call::Agent(AgentCall::Exec)))),
        "console" if machines => Some((false, Some(Call::Agent(AgentCall::Console)))),
        "binding" if machines => Some((false, Some(Call::Binding))),
        "kubeconfig" if clusters => Some((false, Some(Call::Kubeconfig))),
        _ => None,
    }
}

/// Decides a question for `user` as the server would decide the request.
pub fn decide(user: &User, q: &Question) -> Verdict {
    if user.is_admin() {
        return Verdict::Allowed(format!(
            "{:?} is in group {:?}",
            user.name,
            crate::auth::ADMIN_GROUP
        ));
    }
    let a = match q {
        Question::NonResource(n) => {
            let public = n.verb == "get" && PUBLIC_PATHS.iter().any(|p| path_matches(p, &n.path));
            return if public {
                Verdict::Allowed("every authenticated user may read it".into())
            } else {
                Verdict::NotAllowed(format!("only admins may {} {}", n.verb, n.path))
            };
        }
        Question::Resource(a) => a,
    };
    let what = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    if a.verb == "*" || a.resource == "*" || a.group == "*" || a.subresource == "*" {
        return Verdict::NotAllowed("only admins hold every verb on every resource".into());
    }
    let Some((method, watch)) = method_of(&a.verb) else {
        return Verdict::NotAllowed(format!(
            "no request of this server is the verb {:?}",
            a.verb
        ));
    };
    let Some(res) = resource_of(a) else {
        return Verdict::NotAllowed(format!("the server has no resource {what}"));
    };
    let Some((status, call)) = subresource_of(res, &a.subresource) else {
        return Verdict::NotAllowed(format!("{what} has no subresource {:?}", a.subresource));
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    // Lists, watches, creates and collection deletes name no object (but
    // an action on an object does).
    let collection = matches!(
        a.verb.as_str(),
        "list" | "watch" | "create" | "deletecollection"
    );
    let name = if collection && call.is_none() {
        None
    } else {
        non_empty(&a.name)
    };
    let t = Target {
        res,
        namespace: if res.namespaced {
            non_empty(&a.namespace)
        } else {
            None
        },
        name,
        status,
        call,
    };
    match authz::check(user, &t, &method, watch) {
        Ok(Decision::Allow) => Verdict::Allowed(String::new()),
        Ok(Decision::AllowIf(cond)) if cond.is_lookup() => Verdict::IfHolds(cond),
        Ok(Decision::AllowIf(cond)) => Verdict::NotAllowed(format!(
            "decided on each object written: {}",
            authz::forbidden(user, &t, &method, watch, Some(&cond))
        )),
        Err(e) => Verdict::NotAllowed(e.to_string()),
    }
}

fn invalid(kind: &str, errs: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(
        Subject {
            group: AUTHORIZATION_GROUP.into(),
            kind: kind.into(),
            resource: kind.to_lowercase() + "s",
            name: String::new(),
        },
        errs,
    )
}

/// The question of a review's spec, or the fields that make it none.
fn question(kind: &str, spec: &Spec) -> ApiResult<Question> {
    let q = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(a), None) => {
            let mut errs = Vec::new();
            if a.verb.is_empty() {
                errs.push(FieldError::required("spec.resourceAttributes.verb"));
            }
            if a.resource.is_empty() {
                errs.push(FieldError::required("spec.resourceAttributes.resource"));
            }
            if !errs.is_empty() {
                return Err(invalid(kind, errs));
            }
            Question::Resource(a.clone())
        }
        (None, Some(n)) => {
            let mut errs = Vec::new();
            if n.verb.is_empty() {
                errs.push(FieldError::required("spec.nonResourceAttributes.verb"));
            }
            if !n.path.starts_with('/') {
                errs.push(FieldError::invalid(
                    "spec.nonResourceAttributes.path",
                    format!("{:?}: must be a path that starts with /", n.path),
                ));
            }
            if !errs.is_empty() {
                return Err(invalid(kind, errs));
            }
            Question::NonResource(n.clone())
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                kind,
                vec![FieldError::new(
                    "spec.nonResourceAttributes",
                    FieldErrorKind::Forbidden,
                    "may not be specified at the same time as spec.resourceAttributes",
                )],
            ));
        }
        (None, None) => {
            return Err(invalid(
                kind,
                vec![FieldError::new(
                    "spec.resourceAttributes",
                    FieldErrorKind::Invalid,
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            ));
        }
    };
    Ok(q)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn parse_body(
    headers: &HeaderMap,
    body: &Bytes,
    api_version: &str,
    kind: &str,
) -> ApiResult<Value> {
    let v = crate::http::body_json(headers, body)?;
    let sent = (v["apiVersion"].as_str(), v["kind"].as_str());
    let ok = |got: Option<&str>, want: &str| got.is_none_or(|g| g == want);
    if !ok(sent.0, api_version) || !ok(sent.1, kind) {
        return Err(ApiError::BadRequest(format!(
            "the body is {} {}, not {api_version} {kind}",
            sent.0.unwrap_or("?"),
            sent.1.unwrap_or("?")
        )));
    }
    Ok(v)
}

/// Whom an access review asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum About {
    /// The caller (`SelfSubjectAccessReview`).
    Caller,
    /// The user in its spec (`SubjectAccessReview`, admins only).
    Named,
}

impl About {
    fn kind(self) -> &'static str {
        match self {
            About::Caller => "SelfSubjectAccessReview",
            About::Named => "SubjectAccessReview",
        }
    }
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub async fn self_subject_review(
    axum::Extension(user): axum::Extension<User>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || -> ApiResult<Response> {
        if method != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let av = format!("{AUTHENTICATION_GROUP}/{VERSION}");
        if !body.is_empty() {
            parse_body(&headers, &body, &av, "SelfSubjectReview")?;
        }
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "apiVersion": av, "kind": "SelfSubjectReview",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": user.name, "groups": user.groups}},
            }),
        ))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub async fn self_subject_access_review(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<User>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    access_review(&state, &user, About::Caller, &method, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`: admins only.
pub async fn subject_access_review(
    State(state): State<AppState>,
    axum::Extension(user): axum::Extension<User>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    access_review(&state, &user, About::Named, &method, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn access_review(
    state: &AppState,
    caller: &User,
    about: About,
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    if *method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let kind = about.kind();
    if about == About::Named && !caller.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "user {:?} cannot create subjectaccessreviews.{AUTHORIZATION_GROUP} (cluster-wide): only admins may ask about other users",
            caller.name
        )));
    }
    let av = format!("{AUTHORIZATION_GROUP}/{VERSION}");
    let mut review = parse_body(headers, body, &av, kind)?;
    let spec: Spec = serde_json::from_value(review["spec"].clone())
        .map_err(|e| invalid(kind, vec![FieldError::invalid("spec", e.to_string())]))?;
    let q = question(kind, &spec)?;
    let subject = if about == About::Named {
        if spec.user.is_empty() && spec.groups.is_empty() {
            return Err(invalid(
                kind,
                vec![FieldError::invalid(
                    "spec.user",
                    "at least one of user or groups must be specified",
                )],
            ));
        }
        User {
            name: spec.user.clone(),
            groups: spec.groups.clone(),
        }
    } else {
        caller.clone()
    };
    let (allowed, reason) = match decide(&subject, &q) {
        Verdict::Allowed(r) => (true, r),
        Verdict::NotAllowed(r) => (false, r),
        Verdict::IfHolds(cond) => {
            if authz::holds(&state.api, &cond).await? {
                (true, String::new())
            } else {
                (false, cond.unmet())
            }
        }
    };
    review["apiVersion"] = json!(av);
    review["kind"] = json!(kind);
    review["metadata"] = json!({"creationTimestamp": null});
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    review["status"] = status;
    Ok(json_response(StatusCode::CREATED, &review))
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

    fn ask(verb: &str, group: &str, resource: &str, ns: &str, sub: &str, name: &str) -> Question {
        Question::Resource(ResourceAttributes {
            namespace: ns.into(),
            verb: verb.into(),
            group: group.into(),
            version: String::new(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
        })
    }

    fn allowed(v: &Verdict) -> bool {
        matches!(v, Verdict::Allowed(_))
    }

    #[test]
    fn a_tenant_may_what_its_organization_may_and_no_more() {
        let alice = user("alice", &["org:acme"]);
        let p = paddock_api::GROUP;
        for (q, want) in [
            (ask("create", p, "clusters", "acme", "", ""), true),
            (ask("delete", p, "clusters", "acme", "", "demo"), true),
            (
                ask("create", p, "clusters", "acme", "kubeconfig", "demo"),
                true,
            ),
            (ask("list", p, "machines", "acme", "", ""), true),
            (ask("create", p, "machines", "acme", "exec", "m1"), true),
            (ask("delete", p, "machines", "acme", "", "m1"), false),
            (
                ask("update", p, "clusters", "acme", "status", "demo"),
                false,
            ),
            (ask("create", p, "machines", "acme", "binding", "m1"), false),
            (ask("create", p, "clusters", "other", "", ""), false),
            (ask("list", p, "clusters", "", "", ""), false),
            (ask("list", p, "hosts", "", "", ""), false),
            (ask("get", "", "secrets", "acme", "", "x"), false),
            (ask("get", "", "namespaces", "", "", "acme"), true),
            (ask("get", "", "namespaces", "", "", "other"), false),
            (ask("*", "*", "*", "acme", "", ""), false),
        ] {
            assert_eq!(allowed(&decide(&alice, &q)), want, "{q:?}");
        }
    }

    #[test]
    fn admins_may_everything_and_hosts_what_is_theirs() {
        let root = user("root", &[crate::auth::ADMIN_GROUP]);
        assert!(allowed(&decide(&root, &ask("*", "*", "*", "", "", ""))));
        let h1 = user("host:h1", &[authz::HOSTS_GROUP]);
        let p = paddock_api::GROUP;
        assert!(allowed(&decide(
            &h1,
            &ask("list", p, "machines", "", "", "")
        )));
        assert!(!allowed(&decide(
            &h1,
            &ask("create", p, "clusters", "acme", "", "")
        )));
        // A bootstrap Secret: looked up; a Machine's status: per object.
        assert!(matches!(
            decide(&h1, &ask("get", "", "secrets", "acme", "", "boot")),
            Verdict::IfHolds(_)
        ));
        let Verdict::NotAllowed(why) =
            decide(&h1, &ask("update", p, "machines", "acme", "status", "m1"))
        else {
            panic!("a write condition is not a yes");
        };
        assert!(why.contains("bound to host"), "{why}");
    }

    #[test]
    fn unknown_resources_verbs_and_subresources_are_noes_that_say_why() {
        let alice = user("alice", &["org:acme"]);
        let p = paddock_api::GROUP;
        for (q, why) in [
            (
                ask("get", "apps", "deployments", "acme", "", ""),
                "no resource deployments.apps",
            ),
            (
                ask("escalate", p, "clusters", "acme", "", ""),
                "verb \"escalate\"",
            ),
            (
                ask("get", p, "clusters", "acme", "scale", "x"),
                "no subresource \"scale\"",
            ),
        ] {
            match decide(&alice, &q) {
                Verdict::NotAllowed(r) => assert!(r.contains(why), "{r}"),
                other => panic!("{q:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn non_resource_paths_are_public_for_reads_only() {
        let alice = user("alice", &["org:acme"]);
        let q = |verb: &str, path: &str| {
            Question::NonResource(NonResourceAttributes {
                path: path.into(),
                verb: verb.into(),
            })
        };
        assert!(allowed(&decide(
            &alice,
            &q("get", "/apis/paddock.io/v1alpha1")
        )));
        assert!(allowed(&decide(&alice, &q("get", "/healthz"))));
        assert!(allowed(&decide(&alice, &q("get", "/version/"))));
        assert!(!allowed(&decide(&alice, &q("post", "/apis"))));
        assert!(!allowed(&decide(&alice, &q("get", "/metrics"))));
    }

    #[test]
    fn a_review_asks_exactly_one_question() {
        let none = Spec::default();
        let err = question("SelfSubjectAccessReview", &none).unwrap_err();
        assert!(matches!(err, ApiError::Invalid(..)), "{err}");
        let both = Spec {
            resource_attributes: Some(ResourceAttributes::default()),
            non_resource_attributes: Some(NonResourceAttributes::default()),
            ..Spec::default()
        };
        assert!(
            question("SelfSubjectAccessReview", &both)
                .unwrap_err()
                .to_string()
                .contains("spec.nonResourceAttributes")
        );
        let no_verb = Spec {
            resource_attributes: Some(ResourceAttributes {
                resource: "clusters".into(),
                ..Default::default()
            }),
            ..Spec::default()
        };
        assert!(
            question("SelfSubjectAccessReview", &no_verb)
                .unwrap_err()
                .to_string()
                .contains("spec.resourceAttributes.verb")
        );
    }
}
