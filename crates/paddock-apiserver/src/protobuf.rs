//! Request bodies in Kubernetes' protobuf encoding, for the kinds kubectl's
//! typed commands send that way (`kubectl create namespace|secret`,
//! `kubectl auth can-i|whoami`). Only decoding: responses are always JSON,
//! which every client accepts.

use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde_json::{Map, Value, json};

/// Content type of protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8; 4] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    generate_name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct OwnerReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
    #[prost(string, tag = "5")]
    api_version: String,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    block_owner_deletion: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

/// `authorization.k8s.io/v1` `ResourceAttributes` (its selectors left out:
/// Paddock's authorizer does not decide on them).
#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "4")]
    version: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

/// The spec of a `SubjectAccessReview`; a `SelfSubjectAccessReview`'s has
/// the first two fields only, under the same tags.
#[derive(Clone, PartialEq, Message)]
struct AccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, tag = "3")]
    user: String,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(string, tag = "6")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct AccessReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<AccessReviewSpec>,
}

/// A `SelfSubjectReview` as a client sends it: metadata only.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

fn access_review_json(kind: &str, r: AccessReview) -> Value {
    let spec = r.spec.unwrap_or_default();
    let mut out = json!({});
    if let Some(a) = spec.resource_attributes {
        out["resourceAttributes"] = json!({
            "namespace": a.namespace, "verb": a.verb, "group": a.group, "version": a.version,
            "resource": a.resource, "subresource": a.subresource, "name": a.name,
        });
    }
    if let Some(a) = spec.non_resource_attributes {
        out["nonResourceAttributes"] = json!({"path": a.path, "verb": a.verb});
    }
    if kind == "SubjectAccessReview" {
        out["user"] = json!(spec.user);
        out["groups"] = json!(spec.groups);
        out["uid"] = json!(spec.uid);
    }
    json!({"apiVersion": AUTHORIZATION_V1, "kind": kind, "metadata": meta_json(r.metadata), "spec": out})
}

const AUTHORIZATION_V1: &str = "authorization.k8s.io/v1";
const AUTHENTICATION_V1: &str = "authentication.k8s.io/v1";

fn meta_json(m: Option<ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    if !m.name.is_empty() {
        put("name", json!(m.name));
    }
    if !m.generate_name.is_empty() {
        put("generateName", json!(m.generate_name));
    }
    if !m.namespace.is_empty() {
        put("namespace", json!(m.namespace));
    }
    if !m.labels.is_empty() {
        put("labels", json!(m.labels));
    }
    if !m.annotations.is_empty() {
        put("annotations", json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        put("finalizers", json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| {
                json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid,
                       "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion})
            })
            .collect();
        put("ownerReferences", json!(refs));
    }
    Value::Object(out)
}

/// Decodes a protobuf body of a supported kind into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body lacks the k8s envelope")?;
    let env = Unknown::decode(rest).map_err(|e| format!("invalid protobuf envelope: {e}"))?;
    let tm = env.type_meta.unwrap_or_default();
    match (tm.api_version.as_str(), tm.kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = Namespace::decode(env.raw.as_slice())
                .map_err(|e| format!("invalid Namespace: {e}"))?;
            Ok(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta_json(ns.metadata)}))
        }
        ("v1", "Secret") => {
            let s =
                Secret::decode(env.raw.as_slice()).map_err(|e| format!("invalid Secret: {e}"))?;
            let b64 = base64::engine::general_purpose::STANDARD;
            let data: BTreeMap<String, String> = s
                .data
                .into_iter()
                .map(|(k, v)| (k, b64.encode(v)))
                .collect();
            let mut obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta_json(s.metadata), "data": data});
            if let Some(t) = s.type_ {
                obj["type"] = json!(t);
            }
            if !s.string_data.is_empty() {
                obj["stringData"] = json!(s.string_data);
            }
            if let Some(i) = s.immutable {
                obj["immutable"] = json!(i);
            }
            Ok(obj)
        }
        (AUTHORIZATION_V1, kind @ ("SelfSubjectAccessReview" | "SubjectAccessReview")) => {
            let r = AccessReview::decode(env.raw.as_slice())
                .map_err(|e| format!("invalid {kind}: {e}"))?;
            Ok(access_review_json(kind, r))
        }
        (AUTHENTICATION_V1, "SelfSubjectReview") => {
            let r = SelfSubjectReview::decode(env.raw.as_slice())
                .map_err(|e| format!("invalid SelfSubjectReview: {e}"))?;
            Ok(
                json!({"apiVersion": AUTHENTICATION_V1, "kind": "SelfSubjectReview", "metadata": meta_json(r.metadata)}),
            )
        }
        (av, kind) => Err(format!(
            "protobuf bodies are accepted for v1 Namespace and Secret and the access reviews only, not {av} {kind}: send application/json"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: "v1".into(),
                kind: kind.into(),
            }),
            raw,
        };
        let mut out = MAGIC.to_vec();
        out.extend(env.encode_to_vec());
        out
    }

    #[test]
    fn access_reviews_decode_to_json() {
        let r = AccessReview {
            metadata: None,
            spec: Some(AccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: "acme".into(),
                    verb: "create".into(),
                    group: "paddock.io".into(),
                    resource: "clusters".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let env = Unknown {
            type_meta: Some(TypeMeta {
                api_version: AUTHORIZATION_V1.into(),
                kind: "SelfSubjectAccessReview".into(),
            }),
            raw: r.encode_to_vec(),
        };
        let mut body = MAGIC.to_vec();
        body.extend(env.encode_to_vec());
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["spec"]["resourceAttributes"]["resource"], "clusters");
        assert_eq!(v["spec"]["resourceAttributes"]["namespace"], "acme");
        assert!(
            v["spec"].get("user").is_none(),
            "a self review names no user"
        );
    }

    #[test]
    fn secrets_round_trip_to_json() {
        let s = Secret {
            metadata: Some(ObjectMeta {
                name: "x".into(),
                namespace: "acme".into(),
                ..Default::default()
            }),
            data: [("a".to_owned(), b"b".to_vec())].into(),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let v = decode(&envelope("Secret", s.encode_to_vec())).unwrap();
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(v["data"]["a"], "Yg==");
        assert!(decode(b"nope").is_err());
        assert!(
            decode(&envelope("Pod", vec![]))
                .unwrap_err()
                .contains("not v1 Pod")
        );
    }
}
