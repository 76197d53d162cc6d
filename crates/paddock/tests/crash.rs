//! Crash safety: SIGKILL the server in the middle of a stream of writes,
//! start it again on the same data directory, and find every acknowledged
//! write there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A server on `data`, its store in `etcd` when the suite runs on etcd.
async fn spawn(data: &std::path::Path, etcd: Option<&paddock_etcd::LocalCluster>) -> ServerProcess {
    ServerProcess::spawn(data, &etcd.map(etcd_flags).unwrap_or_default(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let etcd = match test_store_is_etcd() {
        true => Some(test_etcd(dir.path()).await),
        false => None,
    };
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut counter_acked = 0u64;
    for round in 0..3 {
        let mut server = spawn(&data, etcd.as_ref()).await;
        let api: Api<Secret> = Api::namespaced(server.client(), "default");
        // Everything acknowledged in earlier rounds is there.
        let present: std::collections::HashSet<String> = api
            .list(&ListParams::default())
            .await
            .expect("list after restart")
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        // The list served by the watch cache is the store's own read at
        // the same revision.
        let served = api.list(&ListParams::default()).await.expect("cached list");
        let rv = served.metadata.resource_version.clone().expect("rv");
        let exact = api
            .list(
                &ListParams::default()
                    .at(&rv)
                    .matching(kube::api::VersionMatch::Exact),
            )
            .await
            .expect("exact list from the store");
        let named = |l: &kube::core::ObjectList<Secret>| -> Vec<(Option<String>, Option<String>)> {
            l.items
                .iter()
                .map(|s| (s.metadata.name.clone(), s.metadata.resource_version.clone()))
                .collect()
        };
        assert_eq!(
            named(&served),
            named(&exact),
            "round {round}: the cache and the store disagree at revision {rv}"
        );
        let want = acked.lock().expect("lock").clone();
        let missing: Vec<&String> = want.iter().filter(|n| !present.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        if round > 0 {
            let c = api.get("counter").await.expect("counter");
            let v: u64 = c
                .metadata
                .annotations
                .and_then(|a| a.get("n").cloned())
                .and_then(|n| n.parse().ok())
                .expect("n");
            assert!(
                v >= counter_acked,
                "round {round}: counter at {v}, but {counter_acked} was acknowledged"
            );
            counter_acked = v;
        } else {
            let mut c = Secret::default();
            c.metadata.name = Some("counter".into());
            api.create(&PostParams::default(), &c)
                .await
                .expect("counter");
        }

        // Writers: creates from several clients, and one sequence of updates.
        let mut tasks = Vec::new();
        for w in 0..6 {
            let api = api.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let mut s = Secret::default();
                    let name = format!("r{round}-w{w}-{n}");
                    s.metadata.name = Some(name.clone());
                    s.string_data = Some([("k".to_owned(), "v".repeat(200))].into());
                    if api.create(&PostParams::default(), &s).await.is_err() {
                        return;
                    }
                    acked.lock().expect("lock").push(name);
                }
            }));
        }
        let updates = {
            let api = api.clone();
            let start = counter_acked;
            tokio::spawn(async move {
                let mut last = start;
                for n in start + 1.. {
                    let p = json!({"metadata": {"annotations": {"n": n.to_string()}}});
                    if api
                        .patch("counter", &PatchParams::default(), &Patch::Merge(&p))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    last = n;
                }
                last
            })
        };
        let before = acked.lock().expect("lock").len();
        eventually(30, "writes to flow", || {
            let acked = acked.clone();
            async move { (acked.lock().expect("lock").len() >= before + 150).then_some(()) }
        })
        .await;
        server.kill();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        counter_acked = updates.await.expect("updater");
    }
    let server = spawn(&data, etcd.as_ref()).await;
    let api: Api<Secret> = Api::namespaced(server.client(), "default");
    let n = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    let acked = acked.lock().expect("lock").len();
    assert!(
        n > acked,
        "all {acked} acknowledged creates plus the counter are there ({n})"
    );
    drop(server);
}
