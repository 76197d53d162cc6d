//! API discovery: `/version`, `/api`, `/apis` and the per-group-version
//! resource lists that `kubectl api-resources` and every client read first.

use axum::Json;
use axum::extract::Path;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::{RESOURCES, groups};
use crate::review;

/// The served groups: the stored resources' and the access reviews'.
fn all_groups() -> Vec<(&'static str, &'static str)> {
    let mut out = groups();
    for k in &review::KINDS {
        if !out.contains(&(k.group, review::VERSION)) {
            out.push((k.group, review::VERSION));
        }
    }
    out
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0+paddock-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

pub async fn core_versions() -> Json<Value> {
    Json(
        json!({"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub async fn group_list() -> Json<Value> {
    let groups: Vec<Value> = all_groups()
        .into_iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub async fn group(Path(group): Path<String>) -> Result<Json<Value>, ApiError> {
    let (g, v) = all_groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or(ApiError::NoRoute)?;
    let mut entry = group_entry(g, v);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Ok(Json(entry))
}

fn resource_list(group: &str, version: &str) -> Result<Json<Value>, ApiError> {
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status_subresource {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if version == review::VERSION {
        for k in review::KINDS.iter().filter(|k| k.group == group) {
            list.push(json!({
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": false,
                "kind": k.kind,
                "verbs": ["create"],
            }));
        }
    }
    if list.is_empty() {
        return Err(ApiError::NoRoute);
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    ))
}

pub async fn core_resources() -> Result<Json<Value>, ApiError> {
    resource_list("", "v1")
}

pub async fn group_resources(
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&group, &version)
}
