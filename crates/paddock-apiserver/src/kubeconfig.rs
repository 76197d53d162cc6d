//! `POST .../namespaces/{org}/clusters/{name}/kubeconfig`: a kubeconfig for
//! a workload cluster with a short-lived client certificate signed by the
//! cluster's CA (the caller as CN, the requested groups as O). It points at
//! the gateway: `server` is the gateway's address, `tls-server-name` the
//! cluster's name there, which the gateway routes on and the cluster's API
//! certificate carries.

use std::time::Duration;

use base64::Engine;
use paddock_pki::Ca;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Api;
use crate::auth::User;
use crate::error::{ApiError, ApiResult, Subject};
use crate::resources;
use paddock_api::FieldError;

/// How the management plane hands out access to workload clusters.
#[derive(Debug, Clone)]
pub struct ClusterAccess {
    /// Clusters are `<cluster>.<org>.<base_domain>` at the gateway.
    pub base_domain: String,
    /// `https://host:port` where clients reach the gateway.
    pub gateway_url: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for ClusterAccess {
    fn default() -> Self {
        Self {
            base_domain: "paddock.local".into(),
            gateway_url: "https://127.0.0.1:6443".into(),
            default_ttl: Duration::from_secs(8 * 3600),
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Request {
    #[serde(default)]
    spec: RequestSpec,
}

/// Parses `8h`, `90m`, `1h30m`, `3600s`, `30d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total = total.checked_add(n.checked_mul(match c {
            'd' => 86400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        })?)?;
    }
    (num.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

fn subject(name: &str) -> Subject {
    Subject {
        group: paddock_api::GROUP.into(),
        kind: "ClusterKubeconfig".into(),
        resource: "clusters".into(),
        name: name.into(),
    }
}

pub async fn issue(
    api: &Api,
    access: &ClusterAccess,
    user: &User,
    ns: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let req: Request = if body.is_empty() {
        Request::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid kubeconfig request: {e}")))?
    };
    let mut errs = Vec::new();
    let ttl = match req.spec.ttl.as_deref() {
        None => access.default_ttl,
        Some(t) => match parse_duration(t) {
            Some(d) if d <= access.max_ttl => d,
            Some(_) => {
                errs.push(FieldError::invalid(
                    "spec.ttl",
                    format!(
                        "{t:?} is longer than the maximum of {}s",
                        access.max_ttl.as_secs()
                    ),
                ));
                access.default_ttl
            }
            None => {
                errs.push(FieldError::invalid(
                    "spec.ttl",
                    format!("{t:?} is not a duration such as 8h or 30m"),
                ));
                access.default_ttl
            }
        },
    };
    for (i, g) in req.spec.groups.iter().enumerate() {
        if g.is_empty() || g.len() > 253 || g.chars().any(|c| c.is_control()) {
            errs.push(FieldError::invalid(
                format!("spec.groups[{i}]"),
                "must be 1 to 253 printable characters",
            ));
        }
        if g == crate::auth::ADMIN_GROUP && !user.is_admin() {
            errs.push(FieldError::new(
                format!("spec.groups[{i}]"),
                paddock_api::FieldErrorKind::Forbidden,
                "only members of system:masters may ask for it",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::Invalid(subject(name), errs));
    }
    let clusters = resources::find(paddock_api::GROUP, paddock_api::VERSION, "clusters")
        .ok_or(ApiError::NoRoute)?;
    api.get(clusters, Some(ns), name).await?;
    let secrets = resources::find("", "v1", "secrets").ok_or(ApiError::NoRoute)?;
    let pki_name = format!("{name}-pki");
    let pki = match api.get(secrets, Some(ns), &pki_name).await {
        Ok(s) => s,
        Err(ApiError::NotFound(_)) => {
            return Err(ApiError::Conflict(
                subject(name),
                "the cluster's certificates are not made yet; try again shortly".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let field = |k: &str| -> ApiResult<String> {
        let b64 = pki["data"][k]
            .as_str()
            .ok_or_else(|| ApiError::Internal(format!("{pki_name} has no {k}")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ApiError::Internal(format!("{pki_name}/{k}: {e}")))?;
        String::from_utf8(raw).map_err(|e| ApiError::Internal(format!("{pki_name}/{k}: {e}")))
    };
    let (ca_pem, ca_key) = (field("ca.crt")?, field("ca.key")?);
    let ca = Ca::from_pem(&ca_pem, &ca_key)?;
    let cert = ca.issue_client(&user.name, &req.spec.groups, ttl)?;
    let server_name = format!("{name}.{ns}.{}", access.base_domain);
    let context = format!("{name}.{ns}");
    let kubeconfig = paddock_pki::Kubeconfig {
        context: &context,
        user: &user.name,
        server: &access.gateway_url,
        server_name: &server_name,
        ca_pem: &ca_pem,
        cert: &cert,
    }
    .render();
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(ttl.as_secs() as i64))
        .map(|t| t.to_string())
        .unwrap_or_default();
    tracing::info!(user = %user.name, cluster = %name, org = %ns, ttl_s = ttl.as_secs(), "issued a cluster kubeconfig");
    Ok(json!({
        "apiVersion": paddock_api::API_VERSION,
        "kind": "ClusterKubeconfig",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ttl": format!("{}s", ttl.as_secs()), "groups": req.spec.groups},
        "status": {
            "kubeconfig": kubeconfig,
            "server": access.gateway_url,
            "serverName": server_name,
            "user": user.name,
            "expirationTimestamp": expires,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8h"), Some(Duration::from_secs(28800)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(30 * 86400)));
        for bad in ["", "8", "h", "8w", "-1h", "0s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
