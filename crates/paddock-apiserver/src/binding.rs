//! `machines/{name}/binding`: the scheduler's placement as one write, as
//! `pods/binding` is in Kubernetes. It sets `spec.hostName` and the
//! `Scheduled` condition together, and refuses a Machine that is already
//! bound (or being deleted): a Machine is never bound twice, whatever the
//! scheduler's cache believed.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::Api;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::resources::{self, Resource};

fn machines() -> ApiResult<&'static Resource> {
    resources::find(paddock_api::GROUP, paddock_api::VERSION, "machines")
        .ok_or_else(|| ApiError::Internal("machines are not served".into()))
}

/// The host a binding names: `{"target": {"name": <host>}}`.
pub fn target(body: &Value) -> ApiResult<String> {
    let name = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::BadRequest(
            "target.name: Required value: the name of the Host to bind to".into(),
        ));
    }
    Ok(name.to_owned())
}

/// The Machine as bound to `host`, conditions and phase with it.
fn bound(old: &Value, host: &str, now: &str) -> Value {
    let mut new = old.clone();
    new["spec"]["hostName"] = json!(host);
    let mut conditions: Vec<Value> = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "Scheduled");
    conditions.push(json!({
        "type": "Scheduled", "status": "True", "reason": "Bound",
        "message": format!("bound to {host}"), "lastTransitionTime": now,
        // The generation the write gives it (its spec changes).
        "observedGeneration": old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1) + 1,
    }));
    if !new.get("status").is_some_and(Value::is_object) {
        new["status"] = json!({});
    }
    let phase = old
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .filter(|p| *p != "Pending")
        .unwrap_or("Scheduled");
    new["status"]["phase"] = json!(phase);
    new["status"]["conditions"] = json!(conditions);
    new
}

/// Binds Machine `ns/name` to `host`: one conditional write.
pub async fn bind(api: &Api, ns: &str, name: &str, host: &str) -> ApiResult<Value> {
    let res = machines()?;
    let now = Timestamp::now()
        .round(jiff::Unit::Second)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .to_string();
    let refuse = |why: String| Err(ApiError::Conflict(res.subject(name), why));
    let out = api
        .try_modify(res, Some(ns), name, |obj| {
            if let Some(h) = obj.pointer("/spec/hostName").and_then(Value::as_str) {
                return refuse(format!("it is already bound to host {h}"));
            }
            if object::is_deleting(obj) {
                return refuse("it is being deleted".into());
            }
            *obj = bound(obj, host, &now);
            Ok(true)
        })
        .await?;
    out.ok_or_else(|| ApiError::Internal("a binding wrote nothing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_sets_the_host_the_condition_and_the_phase_together() {
        let old = json!({"metadata": {"name": "m", "generation": 3},
            "spec": {"hostName": null, "cpu": 1},
            "status": {"phase": "Pending", "conditions": [
                {"type": "Scheduled", "status": "False", "reason": "Unschedulable"},
                {"type": "Ready", "status": "False"}]}});
        let new = bound(&old, "h7", "2026-12-02T09:00:00Z");
        assert_eq!(new["spec"]["hostName"], "h7");
        assert_eq!(new["status"]["phase"], "Scheduled");
        let conds = new["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conds.len(), 2, "the old Scheduled condition is replaced");
        let s = conds
            .iter()
            .find(|c| c["type"] == "Scheduled")
            .expect("scheduled");
        assert_eq!(
            (
                s["status"].as_str(),
                s["reason"].as_str(),
                s["observedGeneration"].as_i64()
            ),
            (Some("True"), Some("Bound"), Some(4))
        );
        // A phase past Pending is kept.
        let running = json!({"metadata": {}, "spec": {}, "status": {"phase": "Running"}});
        assert_eq!(bound(&running, "h1", "t")["status"]["phase"], "Running");
        assert_eq!(
            target(&json!({"target": {}})).unwrap_err().to_string(),
            "target.name: Required value: the name of the Host to bind to"
        );
    }
}
