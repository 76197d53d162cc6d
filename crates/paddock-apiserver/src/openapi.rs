//! OpenAPI documents generated from the Rust types: `/openapi/v2` and the
//! per-group-version `/openapi/v3` documents that `kubectl explain`,
//! kubectl's field validation and schema-driven clients read.
//!
//! Every kind's schema carries `apiVersion`, `kind` and `metadata`; every
//! kind has its list type; every path declares its path parameters, the
//! query parameters the server reads, its request bodies by media type and
//! its answers, errors being a `Status`. OpenAPI 2.0 cannot say `nullable`
//! or `anyOf`: the v2 document says what it can (int-or-string as a string
//! of that format, as Kubernetes' own v2 does).

use axum::Json;
use axum::extract::Path;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Status};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resources::{RESOURCES, Resource, groups};

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// `io.paddock.v1alpha1.Cluster`, `io.k8s.api.core.v1.Secret`, ...
fn definition_name(r: &Resource) -> String {
    let group = match r.group {
        "" => "io.k8s.api.core".to_owned(),
        "coordination.k8s.io" => "io.k8s.api.coordination".to_owned(),
        g => g.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{group}.{}.{}", r.version, r.kind)
}

/// Which document a piece is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V3,
}

impl Version {
    fn reference(self, name: &str) -> Value {
        match self {
            Self::V2 => json!({"$ref": format!("#/definitions/{name}")}),
            Self::V3 => json!({"$ref": format!("#/components/schemas/{name}")}),
        }
    }
}

/// `T`'s OpenAPI v3 schema with every subschema inlined.
pub(crate) fn inline_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    schema
}

/// A kind's schema: the type's, with the envelope every object has.
fn kind_schema(r: &Resource, v: Version) -> Value {
    let mut s = r.codec.schema();
    let props = s
        .as_object_mut()
        .map(|o| o.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(props)) = props {
        props.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "The versioned schema of this object: always the resource's group/version."}),
        );
        props.insert(
            "kind".into(),
            json!({"type": "string", "description": "The kind of this object, in CamelCase."}),
        );
        let mut meta = v.reference(&format!("{META}.ObjectMeta"));
        if v == Version::V3 {
            meta = json!({"allOf": [meta], "description": "Standard object's metadata."});
        }
        props.insert("metadata".into(), meta);
    }
    // kube's derive describes the root as "Auto-generated derived type for
    // ...": say what the kind is instead, from its spec's own description.
    let derived = s["description"]
        .as_str()
        .is_none_or(|d| d.starts_with("Auto-generated"));
    if derived {
        let about = s
            .pointer("/properties/spec/description")
            .and_then(Value::as_str)
            .map_or_else(|| format!("A {}.", r.kind), str::to_owned);
        s["description"] = json!(about);
    }
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    s
}

fn list_schema(r: &Resource, v: Version) -> Value {
    json!({
        "description": format!("A list of {}.", r.plural),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "The versioned schema of this list."},
            "kind": {"type": "string", "description": "The kind of this list."},
            "metadata": v.reference(&format!("{META}.ListMeta")),
            "items": {"type": "array", "items": v.reference(&definition_name(r)),
                      "description": format!("The {}.", r.plural)},
        },
        "x-kubernetes-group-version-kind":
            [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}],
    })
}

/// The shared definitions: metadata, lists' metadata, `Status`, and the
/// watch event.
fn meta_schemas() -> Vec<(String, Value)> {
    vec![
        (format!("{META}.ObjectMeta"), inline_schema::<ObjectMeta>()),
        (format!("{META}.ListMeta"), inline_schema::<ListMeta>()),
        (format!("{META}.Status"), {
            let mut s = inline_schema::<Status>();
            s["x-kubernetes-group-version-kind"] =
                json!([{"group": "", "version": "v1", "kind": "Status"}]);
            s
        }),
        (
            format!("{META}.WatchEvent"),
            json!({
                "type": "object",
                "required": ["type", "object"],
                "description": "An event in a watch: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR, and the object.",
                "properties": {
                    "type": {"type": "string"},
                    "object": {"type": "object", "description": "The object (a Status for ERROR)."},
                },
            }),
        ),
    ]
}

/// A query or path parameter.
fn param(v: Version, name: &str, place: &str, ty: &str, about: &str) -> Value {
    let mut p = json!({"name": name, "in": place, "description": about});
    if place == "path" {
        p["required"] = json!(true);
    }
    match v {
        Version::V2 => p["type"] = json!(ty),
        Version::V3 => p["schema"] = json!({"type": ty}),
    }
    p
}

fn write_params(v: Version) -> Vec<Value> {
    vec![
        param(
            v,
            "dryRun",
            "query",
            "string",
            "All: validate and admit, but store nothing.",
        ),
        param(
            v,
            "fieldManager",
            "query",
            "string",
            "The name of the writer, recorded in managedFields.",
        ),
        param(
            v,
            "fieldValidation",
            "query",
            "string",
            "Ignore, Warn (the default) or Strict: what unknown fields do.",
        ),
    ]
}

fn list_params(v: Version) -> Vec<Value> {
    vec![
        param(
            v,
            "labelSelector",
            "query",
            "string",
            "Only objects whose labels match.",
        ),
        param(
            v,
            "fieldSelector",
            "query",
            "string",
            "Only objects whose fields match.",
        ),
        param(
            v,
            "limit",
            "query",
            "integer",
            "At most this many objects; the rest by `continue`.",
        ),
        param(
            v,
            "continue",
            "query",
            "string",
            "The token of the next page, from the last page's metadata.",
        ),
        param(
            v,
            "resourceVersion",
            "query",
            "string",
            "Read as of (or not older than) this version.",
        ),
        param(
            v,
            "resourceVersionMatch",
            "query",
            "string",
            "Exact or NotOlderThan: how resourceVersion is read.",
        ),
        param(
            v,
            "watch",
            "query",
            "boolean",
            "Stream changes instead of listing.",
        ),
        param(
            v,
            "allowWatchBookmarks",
            "query",
            "boolean",
            "A watch may send BOOKMARK events.",
        ),
        param(
            v,
            "sendInitialEvents",
            "query",
            "boolean",
            "A watch starts with the current objects.",
        ),
        param(
            v,
            "timeoutSeconds",
            "query",
            "integer",
            "End the list or watch after this many seconds.",
        ),
    ]
}

fn delete_params(v: Version) -> Vec<Value> {
    vec![
        param(
            v,
            "dryRun",
            "query",
            "string",
            "All: check, but delete nothing.",
        ),
        param(
            v,
            "gracePeriodSeconds",
            "query",
            "integer",
            "Seconds before the object is deleted.",
        ),
        param(
            v,
            "propagationPolicy",
            "query",
            "string",
            "Orphan, Background or Foreground: what happens to dependents.",
        ),
    ]
}

const PATCH_TYPES: [&str; 4] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

const BODY_TYPES: [&str; 2] = ["application/json", "application/yaml"];

/// One operation.
struct Op<'a> {
    id: String,
    action: &'a str,
    params: Vec<Value>,
    /// The request body's schema and media types.
    body: Option<(Value, &'a [&'a str])>,
    /// Success codes and the schema each answers with.
    ok: Vec<(&'a str, Value)>,
}

fn operation(r: &Resource, v: Version, op: Op<'_>) -> Value {
    let status = v.reference(&format!("{META}.Status"));
    let mut params = op.params;
    let mut o = json!({
        "operationId": op.id,
        "description": format!("{} {}.", op.action, r.plural),
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "tags": [r.plural],
    });
    let mut responses = Map::new();
    match v {
        Version::V2 => {
            o["produces"] = json!(["application/json"]);
            if let Some((schema, types)) = op.body {
                o["consumes"] = json!(types);
                params.push(
                    json!({"name": "body", "in": "body", "required": true, "schema": schema}),
                );
            }
            for (code, schema) in op.ok {
                responses.insert(code.into(), json!({"description": "OK", "schema": schema}));
            }
            responses.insert(
                "default".into(),
                json!({"description": "An error, as a Status.", "schema": status}),
            );
        }
        Version::V3 => {
            if let Some((schema, types)) = op.body {
                let content: Map<String, Value> = types
                    .iter()
                    .map(|t| ((*t).to_owned(), json!({"schema": schema})))
                    .collect();
                o["requestBody"] = json!({"required": true, "content": content});
            }
            for (code, schema) in op.ok {
                responses.insert(
                    code.into(),
                    json!({"description": "OK", "content": {"application/json": {"schema": schema}}}),
                );
            }
            responses.insert(
                "default".into(),
                json!({"description": "An error, as a Status.", "content": {"application/json": {"schema": status}}}),
            );
        }
    }
    o["parameters"] = json!(params);
    o["responses"] = Value::Object(responses);
    o
}

/// Paths of one resource, with the operations the server serves.
fn paths_for(r: &Resource, v: Version) -> Vec<(String, Value)> {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let (coll, scope) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            "Namespaced",
        )
    } else {
        (format!("{base}/{}", r.plural), "")
    };
    let item = format!("{coll}/{{name}}");
    let obj = v.reference(&definition_name(r));
    let list = v.reference(&format!("{}List", definition_name(r)));
    let status = v.reference(&format!("{META}.Status"));
    let mut path_params = Vec::new();
    if r.namespaced {
        path_params.push(param(
            v,
            "namespace",
            "path",
            "string",
            "The object's namespace (organization).",
        ));
    }
    let mut item_params = path_params.clone();
    item_params.push(param(v, "name", "path", "string", "The object's name."));
    let k = r.kind;
    let mut out = vec![
        (
            coll.clone(),
            json!({
                "parameters": path_params,
                "get": operation(r, v, Op {
                    id: format!("list{scope}{k}"),
                    action: "list",
                    params: list_params(v),
                    body: None,
                    ok: vec![("200", list.clone())],
                }),
                "post": operation(r, v, Op {
                    id: format!("create{scope}{k}"),
                    action: "post",
                    params: write_params(v),
                    body: Some((obj.clone(), &BODY_TYPES)),
                    ok: vec![("200", obj.clone()), ("201", obj.clone()), ("202", obj.clone())],
                }),
                "delete": operation(r, v, Op {
                    id: format!("deletecollection{scope}{k}"),
                    action: "deletecollection",
                    params: [list_params(v), delete_params(v)].concat().into_iter()
                        .filter(|p| !matches!(p["name"].as_str(), Some("watch" | "allowWatchBookmarks" | "sendInitialEvents" | "dryRun")))
                        .chain(std::iter::once(param(v, "dryRun", "query", "string", "All: check, but delete nothing.")))
                        .collect(),
                    body: None,
                    ok: vec![("200", status.clone())],
                }),
            }),
        ),
        (
            item.clone(),
            json!({
                "parameters": item_params.clone(),
                "get": operation(r, v, Op {
                    id: format!("read{scope}{k}"),
                    action: "get",
                    params: vec![param(v, "resourceVersion", "query", "string", "0: any recent version, from the cache.")],
                    body: None,
                    ok: vec![("200", obj.clone())],
                }),
                "put": operation(r, v, Op {
                    id: format!("replace{scope}{k}"),
                    action: "put",
                    params: write_params(v),
                    body: Some((obj.clone(), &BODY_TYPES)),
                    ok: vec![("200", obj.clone()), ("201", obj.clone())],
                }),
                "patch": operation(r, v, Op {
                    id: format!("patch{scope}{k}"),
                    action: "patch",
                    params: [write_params(v), vec![param(v, "force", "query", "boolean", "An apply takes fields other managers own.")]].concat(),
                    body: Some((json!({"type": "object", "description": "The patch, in the format the content type names."}), &PATCH_TYPES)),
                    ok: vec![("200", obj.clone()), ("201", obj.clone())],
                }),
                "delete": operation(r, v, Op {
                    id: format!("delete{scope}{k}"),
                    action: "delete",
                    params: delete_params(v),
                    body: None,
                    ok: vec![("200", json!({})), ("202", obj.clone())],
                }),
            }),
        ),
    ];
    if r.namespaced {
        out.push((
            format!("{base}/{}", r.plural),
            json!({
                "get": operation(r, v, Op {
                    id: format!("list{k}ForAllNamespaces"),
                    action: "list",
                    params: list_params(v),
                    body: None,
                    ok: vec![("200", list.clone())],
                }),
            }),
        ));
    }
    if r.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "parameters": item_params,
                "get": operation(r, v, Op {
                    id: format!("read{scope}{k}Status"),
                    action: "get",
                    params: vec![],
                    body: None,
                    ok: vec![("200", obj.clone())],
                }),
                "put": operation(r, v, Op {
                    id: format!("replace{scope}{k}Status"),
                    action: "put",
                    params: write_params(v),
                    body: Some((obj.clone(), &BODY_TYPES)),
                    ok: vec![("200", obj.clone())],
                }),
                "patch": operation(r, v, Op {
                    id: format!("patch{scope}{k}Status"),
                    action: "patch",
                    params: [write_params(v), vec![param(v, "force", "query", "boolean", "An apply takes fields other managers own.")]].concat(),
                    body: Some((json!({"type": "object", "description": "The patch, in the format the content type names."}), &PATCH_TYPES)),
                    ok: vec![("200", obj)],
                }),
            }),
        ));
    }
    out
}

/// A v3 schema said in OpenAPI 2.0's words: no `nullable`, and
/// int-or-string (`anyOf` integer, string) as a string of that format.
fn to_v2(s: &mut Value) {
    match s {
        Value::Object(o) => {
            o.remove("nullable");
            o.remove("writeOnly");
            o.remove("deprecated");
            o.remove("examples");
            if let Some(c) = o.remove("const") {
                o.insert("enum".into(), json!([c]));
            }
            for key in ["anyOf", "oneOf"] {
                if o.remove(key).is_some() {
                    if o.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                        o.insert("type".into(), json!("string"));
                        o.insert("format".into(), json!("int-or-string"));
                    } else if !o.contains_key("type") {
                        o.insert("type".into(), json!("object"));
                    }
                }
            }
            for v in o.values_mut() {
                to_v2(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(to_v2),
        _ => {}
    }
}

/// A kind that is only ever created and answered, never stored: the
/// access reviews.
struct Review {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    schema: fn() -> Value,
}

const REVIEWS: [Review; 3] = [
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        schema: inline_schema::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>,
    },
    Review {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        schema: inline_schema::<k8s_openapi::api::authorization::v1::SubjectAccessReview>,
    },
    Review {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        schema: inline_schema::<k8s_openapi::api::authentication::v1::SelfSubjectReview>,
    },
];

impl Review {
    fn definition(&self) -> String {
        let group: Vec<&str> = self.group.split('.').collect();
        format!("io.k8s.api.{}.{}.{}", group[0], self.version, self.kind)
    }

    fn parts(&self, v: Version) -> ((String, Value), (String, Value)) {
        let mut schema = (self.schema)();
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": self.group, "version": self.version, "kind": self.kind}]);
        let obj = v.reference(&self.definition());
        let status = v.reference(&format!("{META}.Status"));
        let mut op = json!({
            "operationId": format!("create{}", self.kind),
            "description": format!("Asks a question and answers it: the {} comes back with its status.", self.kind),
            "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind": {"group": self.group, "version": self.version, "kind": self.kind},
            "tags": [self.plural],
        });
        let mut params = write_params(v);
        match v {
            Version::V2 => {
                op["consumes"] = json!(BODY_TYPES);
                op["produces"] = json!(["application/json"]);
                params.push(json!({"name": "body", "in": "body", "required": true, "schema": obj}));
                op["responses"] = json!({
                    "200": {"description": "OK", "schema": obj},
                    "201": {"description": "Created", "schema": obj},
                    "default": {"description": "An error, as a Status.", "schema": status},
                });
            }
            Version::V3 => {
                let content: Map<String, Value> = BODY_TYPES
                    .iter()
                    .map(|t| ((*t).to_owned(), json!({"schema": obj})))
                    .collect();
                op["requestBody"] = json!({"required": true, "content": content});
                op["responses"] = json!({
                    "200": {"description": "OK", "content": {"application/json": {"schema": obj}}},
                    "201": {"description": "Created", "content": {"application/json": {"schema": obj}}},
                    "default": {"description": "An error, as a Status.", "content": {"application/json": {"schema": status}}},
                });
            }
        }
        op["parameters"] = json!(params);
        (
            (self.definition(), schema),
            (
                format!("/apis/{}/{}/{}", self.group, self.version, self.plural),
                json!({"post": op}),
            ),
        )
    }
}

/// The definitions and paths of `resources`.
fn document_parts<'a>(
    resources: impl Iterator<Item = &'a Resource>,
    v: Version,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut schemas: Map<String, Value> = meta_schemas().into_iter().collect();
    let mut paths = Map::new();
    for r in resources {
        schemas.insert(definition_name(r), kind_schema(r, v));
        schemas.insert(format!("{}List", definition_name(r)), list_schema(r, v));
        paths.extend(paths_for(r, v));
    }
    if v == Version::V2 {
        schemas.values_mut().for_each(to_v2);
    }
    (schemas, paths)
}

pub fn v2_document() -> Value {
    let (mut defs, mut paths) = document_parts(RESOURCES.iter(), Version::V2);
    for r in &REVIEWS {
        let ((name, mut schema), (path, item)) = r.parts(Version::V2);
        to_v2(&mut schema);
        defs.insert(name, schema);
        paths.insert(path, item);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Paddock", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "definitions": defs,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                                                "description": "Bearer token authentication"}},
        "security": [{"BearerToken": []}],
    })
}

/// The v2 document, in JSON. Its protobuf form (gnostic's, which kubectl
/// asks for when it validates a kind whose v3 document has no PATCH) is not
/// served: such a request is a `406`, as Kubernetes answers a media type
/// it cannot give, rather than JSON that the client would misread.
pub async fn v2(headers: http::HeaderMap) -> Result<Json<Value>, ApiError> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json_ok = accept.trim().is_empty()
        || accept.split(',').any(|r| {
            matches!(
                r.split(';').next().unwrap_or("").trim(),
                "*/*" | "application/*" | "application/json"
            )
        });
    if json_ok {
        Ok(Json(v2_document()))
    } else {
        Err(ApiError::NotAcceptable("application/json".into()))
    }
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
    for r in &REVIEWS {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    Json(json!({"paths": paths}))
}

pub fn v3_document(group: &str, version: &str) -> Option<Value> {
    let resources = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version);
    let (mut schemas, mut paths) = document_parts(resources, Version::V3);
    for r in REVIEWS
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let ((name, schema), (path, item)) = r.parts(Version::V3);
        schemas.insert(name, schema);
        paths.insert(path, item);
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Paddock", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header",
                                                "description": "Bearer token authentication"}},
        },
        "security": [{"BearerToken": []}],
    }))
}

pub async fn v3_core(Path(version): Path<String>) -> Result<Json<Value>, ApiError> {
    v3_document("", &version).map(Json).ok_or(ApiError::NoRoute)
}

pub async fn v3_group(
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    v3_document(&group, &version)
        .map(Json)
        .ok_or(ApiError::NoRoute)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` names a definition the document has; every path's
    /// `{parameters}` are declared; every kind says what it is.
    fn check(doc: &Value, defs: &Map<String, Value>, prefix: &str) {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        out.push(r.clone());
                    }
                    o.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(doc, &mut all);
        for r in all {
            let name = r.strip_prefix(prefix).unwrap_or_else(|| panic!("{r}"));
            assert!(defs.contains_key(name), "{r} is not defined");
        }
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let declared: Vec<&str> = item["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                assert!(declared.contains(&name), "{path}: {name} undeclared");
            }
        }
        for (name, s) in defs {
            let d = s["description"].as_str().unwrap_or("");
            assert!(!d.starts_with("Auto-generated"), "{name}: {d}");
            if s.get("x-kubernetes-group-version-kind").is_some() && !name.ends_with("Status") {
                for field in ["apiVersion", "kind", "metadata"] {
                    assert!(s["properties"].get(field).is_some(), "{name} lacks {field}");
                }
            }
        }
    }

    #[test]
    fn documents_are_whole() {
        let v2 = v2_document();
        check(
            &v2,
            v2["definitions"].as_object().expect("defs"),
            "#/definitions/",
        );
        let text = v2.to_string();
        assert!(
            !text.contains("nullable") && !text.contains("anyOf"),
            "v2 says only what 2.0 can"
        );
        for (g, v) in std::iter::once(("", "v1")).chain(groups()).chain([
            ("authorization.k8s.io", "v1"),
            ("authentication.k8s.io", "v1"),
        ]) {
            let d = v3_document(g, v).expect("document");
            check(
                &d,
                d["components"]["schemas"].as_object().expect("schemas"),
                "#/components/schemas/",
            );
        }
        let d = v3_document("paddock.io", "v1alpha1").expect("paddock.io");
        assert!(
            d["paths"]
                .get("/apis/paddock.io/v1alpha1/namespaces/{namespace}/clusters/{name}/status")
                .is_some()
        );
        assert!(
            d["components"]["schemas"]
                .get("io.paddock.v1alpha1.ClusterList")
                .is_some()
        );
        assert!(v3_document("nowhere.io", "v1").is_none());
    }
}
