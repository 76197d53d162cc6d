//! OpenAPI documents generated from the Rust types: `/openapi/v2` and the
//! per-group-version `/openapi/v3` documents that `kubectl explain` and
//! kubectl's field validation read.

use axum::Json;
use axum::extract::Path;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resources::{RESOURCES, Resource, groups};

/// `io.paddock.v1alpha1.Cluster`, `io.k8s.api.core.v1.Secret`, ...
fn definition_name(r: &Resource) -> String {
    let group = match r.group {
        "" => "io.k8s.api.core".to_owned(),
        "coordination.k8s.io" => "io.k8s.api.coordination".to_owned(),
        g => g.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{group}.{}.{}", r.version, r.kind)
}

fn gvk(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

fn schema_of(r: &Resource) -> Value {
    let mut s = r.codec.schema();
    s["x-kubernetes-group-version-kind"] = gvk(r);
    s
}

fn query_params() -> Vec<Value> {
    ["dryRun", "fieldManager", "fieldValidation", "pretty"]
        .iter()
        .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect()
}

/// Paths of one resource, with the operations clients look for.
fn paths_for(r: &Resource, v3: bool) -> Vec<(String, Value)> {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let coll = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item = format!("{coll}/{{name}}");
    let reference = if v3 {
        format!("#/components/schemas/{}", definition_name(r))
    } else {
        format!("#/definitions/{}", definition_name(r))
    };
    let op = |verb: &str, action: &str| {
        let mut o = json!({
            "operationId": format!("{verb}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
            "parameters": query_params(),
        });
        if v3 {
            o["responses"] = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": reference}}}}});
        } else {
            o["responses"] = json!({"200": {"description": "OK", "schema": {"$ref": reference}}});
        }
        o
    };
    vec![
        (
            coll,
            json!({"get": op("list", "list"), "post": op("create", "post")}),
        ),
        (
            item,
            json!({"get": op("read", "get"), "put": op("replace", "put"), "patch": op("patch", "patch"), "delete": op("delete", "delete")}),
        ),
    ]
}

pub async fn v2() -> Json<Value> {
    let mut defs = Map::new();
    let mut paths = Map::new();
    for r in RESOURCES.iter() {
        defs.insert(definition_name(r), schema_of(r));
        paths.extend(paths_for(r, false));
    }
    Json(json!({
        "swagger": "2.0",
        "info": {"title": "Paddock", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "definitions": defs,
    }))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub async fn v3_root() -> Json<Value> {
    let mut paths = Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    Json(json!({"paths": paths}))
}

fn v3_doc(group: &str, version: &str) -> Result<Json<Value>, ApiError> {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        schemas.insert(definition_name(r), schema_of(r));
        paths.extend(paths_for(r, true));
    }
    if schemas.is_empty() {
        return Err(ApiError::NoRoute);
    }
    Ok(Json(json!({
        "openapi": "3.0.0",
        "info": {"title": "Paddock", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    })))
}

pub async fn v3_core(Path(version): Path<String>) -> Result<Json<Value>, ApiError> {
    v3_doc("", &version)
}

pub async fn v3_group(
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    v3_doc(&group, &version)
}
