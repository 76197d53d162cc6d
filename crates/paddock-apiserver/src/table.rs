//! `meta.k8s.io/v1` `Table` responses, so `kubectl get` prints useful columns.

use serde_json::{Value, json};

/// One column: header, type, and how to compute the cell from an object.
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: i32,
    pub cell: fn(&Value) -> Value,
}

fn at<'a>(obj: &'a Value, ptr: &str) -> Option<&'a Value> {
    obj.pointer(ptr).filter(|v| !v.is_null())
}

fn text(obj: &Value, ptr: &str) -> Value {
    match at(obj, ptr) {
        Some(Value::String(s)) => json!(s),
        Some(v) => json!(v.to_string()),
        None => json!("<none>"),
    }
}

fn int(obj: &Value, ptr: &str) -> u64 {
    at(obj, ptr).and_then(Value::as_u64).unwrap_or(0)
}

/// Kubernetes' short age format: 45s, 12m, 5h, 3d, 2y.
pub fn age(obj: &Value) -> Value {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return json!("<unknown>");
    };
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return json!("<invalid>");
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    json!(human_duration(secs))
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s if s < 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn name(obj: &Value) -> Value {
    text(obj, "/metadata/name")
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    description: "Name of the object",
    priority: 0,
    cell: name,
};
const AGE: Column = Column {
    name: "Age",
    kind: "date",
    description: "Time since creation",
    priority: 0,
    cell: age,
};

pub mod columns {
    use super::*;

    pub fn cluster() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Phase",
                kind: "string",
                description: "Where the cluster is in its life",
                priority: 0,
                cell: |o| text(o, "/status/phase"),
            },
            Column {
                name: "Control Plane",
                kind: "string",
                description: "Ready and desired control-plane machines",
                priority: 0,
                cell: |o| {
                    json!(format!(
                        "{}/{}",
                        int(o, "/status/controlPlaneReady"),
                        int(o, "/spec/controlPlane/replicas")
                    ))
                },
            },
            Column {
                name: "Nodes",
                kind: "string",
                description: "Ready and desired workers",
                priority: 0,
                cell: |o| {
                    let want: u64 = o
                        .pointer("/spec/nodePools")
                        .and_then(Value::as_array)
                        .map(|ps| {
                            ps.iter()
                                .filter_map(|p| p.get("replicas").and_then(Value::as_u64))
                                .sum()
                        })
                        .unwrap_or(0);
                    json!(format!("{}/{want}", int(o, "/status/nodesReady")))
                },
            },
            Column {
                name: "Version",
                kind: "string",
                description: "Kubernetes version",
                priority: 0,
                cell: |o| text(o, "/spec/kubernetesVersion"),
            },
            Column {
                name: "Node Versions",
                kind: "string",
                description: "The kubelet versions the cluster's Nodes report",
                priority: 0,
                cell: |o| {
                    let vs: Vec<&str> = at(o, "/status/nodeVersions")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    json!(vs.join(","))
                },
            },
            Column {
                name: "Endpoint",
                kind: "string",
                description: "Kubernetes API endpoint",
                priority: 1,
                cell: |o| text(o, "/status/apiEndpoint"),
            },
            AGE,
        ]
    }

    pub fn machine() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Cluster",
                kind: "string",
                description: "Cluster of the machine",
                priority: 0,
                cell: |o| text(o, "/spec/clusterName"),
            },
            Column {
                name: "Role",
                kind: "string",
                description: "control-plane or worker",
                priority: 0,
                cell: |o| text(o, "/spec/role"),
            },
            Column {
                name: "Host",
                kind: "string",
                description: "Host the machine is bound to",
                priority: 0,
                cell: |o| text(o, "/spec/hostName"),
            },
            Column {
                name: "IP",
                kind: "string",
                description: "Overlay address",
                priority: 0,
                cell: |o| text(o, "/spec/ip"),
            },
            Column {
                name: "Phase",
                kind: "string",
                description: "Where the machine is in its life",
                priority: 0,
                cell: |o| text(o, "/status/phase"),
            },
            Column {
                name: "CPU",
                kind: "integer",
                description: "vCPUs",
                priority: 1,
                cell: |o| json!(int(o, "/spec/cpu")),
            },
            Column {
                name: "Memory",
                kind: "string",
                description: "Memory",
                priority: 1,
                cell: |o| text(o, "/spec/memory"),
            },
            AGE,
        ]
    }

    pub fn host() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Phase",
                kind: "string",
                description: "Ready, NotReady or Registering",
                priority: 0,
                cell: |o| text(o, "/status/phase"),
            },
            Column {
                name: "Schedulable",
                kind: "string",
                description: "Whether new machines may be placed here",
                priority: 0,
                cell: |o| {
                    json!(if o
                        .pointer("/spec/unschedulable")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                    {
                        "false"
                    } else {
                        "true"
                    })
                },
            },
            Column {
                name: "CPU",
                kind: "string",
                description: "Allocated and allocatable vCPUs",
                priority: 0,
                cell: |o| {
                    json!(format!(
                        "{}/{}",
                        int(o, "/status/allocated/cpu"),
                        int(o, "/status/allocatable/cpu")
                    ))
                },
            },
            Column {
                name: "Memory",
                kind: "string",
                description: "Allocated and allocatable memory",
                priority: 0,
                cell: |o| {
                    let f = |p| at(o, p).and_then(Value::as_str).unwrap_or("0").to_owned();
                    json!(format!(
                        "{}/{}",
                        f("/status/allocated/memory"),
                        f("/status/allocatable/memory")
                    ))
                },
            },
            Column {
                name: "Underlay",
                kind: "string",
                description: "VTEP address",
                priority: 0,
                cell: |o| text(o, "/status/underlayIp"),
            },
            Column {
                name: "Agent",
                kind: "string",
                description: "Agent version",
                priority: 1,
                cell: |o| text(o, "/status/agentVersion"),
            },
            AGE,
        ]
    }

    pub fn image() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Boot",
                kind: "string",
                description: "kernel (direct kernel boot) or disk",
                priority: 0,
                cell: |o| {
                    json!(if at(o, "/spec/kernel").is_some() {
                        "kernel"
                    } else {
                        "disk"
                    })
                },
            },
            Column {
                name: "Kubernetes",
                kind: "string",
                description: "The Kubernetes version the image's nodes run",
                priority: 0,
                cell: |o| text(o, "/spec/kubernetesVersion"),
            },
            Column {
                name: "URL",
                kind: "string",
                description: "Where the image comes from",
                priority: 0,
                cell: |o| match at(o, "/spec/kernel/url") {
                    Some(_) => text(o, "/spec/kernel/url"),
                    None => text(o, "/spec/disk/url"),
                },
            },
            AGE,
        ]
    }

    pub fn namespace() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                description: "Active or Terminating",
                priority: 0,
                cell: |o| text(o, "/status/phase"),
            },
            AGE,
        ]
    }

    pub fn secret() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Type",
                kind: "string",
                description: "Secret type",
                priority: 0,
                cell: |o| text(o, "/type"),
            },
            Column {
                name: "Data",
                kind: "integer",
                description: "Number of keys",
                priority: 0,
                cell: |o| {
                    json!(
                        o.get("data")
                            .and_then(Value::as_object)
                            .map_or(0, |m| m.len())
                    )
                },
            },
            AGE,
        ]
    }

    pub fn event() -> Vec<Column> {
        vec![
            Column {
                name: "Last Seen",
                kind: "string",
                description: "Time since the event last happened",
                priority: 0,
                cell: |o| match o
                    .get("lastTimestamp")
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                {
                    Some(t) => json!(human_duration(
                        (jiff::Timestamp::now().as_second() - t.as_second()).max(0)
                    )),
                    None => age(o),
                },
            },
            Column {
                name: "Type",
                kind: "string",
                description: "Normal or Warning",
                priority: 0,
                cell: |o| text(o, "/type"),
            },
            Column {
                name: "Reason",
                kind: "string",
                description: "Why",
                priority: 0,
                cell: |o| text(o, "/reason"),
            },
            Column {
                name: "Object",
                kind: "string",
                description: "What it is about",
                priority: 0,
                cell: |o| {
                    let kind = o
                        .pointer("/involvedObject/kind")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_lowercase();
                    let name = o
                        .pointer("/involvedObject/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    json!(format!("{kind}/{name}"))
                },
            },
            Column {
                name: "Message",
                kind: "string",
                description: "What happened",
                priority: 0,
                cell: |o| text(o, "/message"),
            },
        ]
    }

    pub fn lease() -> Vec<Column> {
        vec![
            NAME,
            Column {
                name: "Holder",
                kind: "string",
                description: "Holder of the lease",
                priority: 0,
                cell: |o| text(o, "/spec/holderIdentity"),
            },
            AGE,
        ]
    }
}

/// A one-row `Table` of `obj`, at its own resourceVersion.
pub fn single(cols: &[Column], obj: Value) -> Value {
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    table(cols, &[obj], &rv, None)
}

/// A `PartialObjectMetadata` of an object's `metadata` (a Table row's
/// object, and a metadata-only read's answer).
pub fn partial(metadata: Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata})
}

/// Builds a `Table` of `objects` with the resource's columns.
pub fn table(
    cols: &[Column],
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let defs: Vec<Value> = cols
        .iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.kind, "format": format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| (c.cell)(o)).collect();
            json!({
                "cells": cells,
                "object": partial(o.get("metadata").cloned().unwrap_or(Value::Null)),
            })
        })
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(5 * 86400), "5d");
    }

    #[test]
    fn cluster_row_counts_ready_and_desired() {
        let obj = json!({
            "metadata": {"name": "demo"},
            "spec": {"kubernetesVersion": "1.31.2", "controlPlane": {"replicas": 3}, "nodePools": [{"replicas": 2}, {"replicas": 1}]},
            "status": {"phase": "Provisioning", "controlPlaneReady": 1, "nodesReady": 2, "nodeVersions": ["v1.31.2"]}
        });
        let t = table(&columns::cluster(), &[obj], "7", None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "demo",
                "Provisioning",
                "1/3",
                "2/3",
                "1.31.2",
                "v1.31.2",
                "<none>",
                "<unknown>"
            ])
        );
    }
}
