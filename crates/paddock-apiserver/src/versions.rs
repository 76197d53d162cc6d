//! `GET /paddock/v1/kubernetes-versions`: the Kubernetes versions a cluster
//! may ask for (those a registered MachineImage carries), newest first, for
//! every signed-in user. Tenants may not read MachineImages themselves
//! (their URLs and kernel command lines are the platform's), but choosing a
//! version is theirs.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::ListOptions;
use crate::error::ApiError;

/// The versions, newest first, without repeats.
pub fn newest_first(images: &[Value]) -> Vec<String> {
    let mut vs: Vec<(paddock_api::version::KubeVersion, String)> = images
        .iter()
        .filter_map(|i| i.pointer("/spec/kubernetesVersion").and_then(Value::as_str))
        .filter_map(|v| Some((v.parse().ok()?, v.to_owned())))
        .collect();
    vs.sort_by_key(|v| std::cmp::Reverse(v.0));
    vs.dedup_by(|a, b| a.1 == b.1);
    vs.into_iter().map(|(_, v)| v).collect()
}

pub async fn handle(State(state): State<AppState>) -> Response {
    let Some(res) =
        crate::resources::find(paddock_api::GROUP, paddock_api::VERSION, "machineimages")
    else {
        return ApiError::Internal("no machineimages".into()).into_response();
    };
    let opts = ListOptions {
        resource_version: Some("0".into()),
        ..ListOptions::default()
    };
    match state.api.list(res, None, &opts).await {
        Ok(page) => Json(json!({
            "kind": "KubernetesVersions",
            "apiVersion": paddock_api::API_VERSION,
            "versions": newest_first(&page.items),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_newest_first_once() {
        let img = |v: &str| json!({"spec": {"kubernetesVersion": v}});
        let images = [
            img("1.31.2"),
            img("1.35.4"),
            img("1.9.0"),
            img("1.35.4"),
            json!({"spec": {}}),
            img("nope"),
        ];
        assert_eq!(newest_first(&images), ["1.35.4", "1.31.2", "1.9.0"]);
    }
}
