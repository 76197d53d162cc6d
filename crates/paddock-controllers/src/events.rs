//! Kubernetes `Event`s that explain what a controller did and why.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

fn event_name(object: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{object}.{nanos:x}")
}

/// Records an event about `obj` (errors are logged, never fatal).
pub async fn record<K>(client: &kube::Client, obj: &K, warning: bool, reason: &str, message: String)
where
    K: Resource<DynamicType = ()>,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let now = Time(Timestamp::now());
    let ev = Event {
        metadata: ObjectMeta {
            // Named as client-go names them: the object and a nanosecond
            // timestamp in hex (a generateName ending in "." is not a valid
            // DNS subdomain, and Kubernetes refuses it).
            name: Some(event_name(&obj.name_any())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(obj.name_any()),
            namespace: obj.namespace(),
            uid: obj.uid(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.clone()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("paddock-controllers".into()),
            host: None,
        }),
        reporting_component: Some("paddock-controllers".into()),
        ..Default::default()
    };
    tracing::info!(object = %obj.name_any(), reason, %message, "event");
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::warn!(error = %e, "cannot record event");
    }
}
