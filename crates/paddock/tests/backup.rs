//! `paddock admin backup` and `restore`: a backup taken under write load
//! from a server on the embedded store restores into etcd (a migration)
//! and back into the embedded store, and each restored server serves
//! exactly the objects the first held at the backup's revision. A restore
//! refuses a store that is not empty, a key that does not open the
//! backup's Secrets, and a damaged file.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// `paddock server` on `data` without controllers (nothing but the
/// clients writes), with the store flags given.
async fn spawn(data: &Path, store: &[String]) -> ServerProcess {
    let mut args = vec!["--no-controllers".to_owned()];
    args.extend(store.iter().cloned());
    ServerProcess::spawn(data, &args, None).await
}

fn admin(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paddock"));
    if let Some(kc) = kubeconfig {
        cmd.arg("--kubeconfig").arg(kc);
    }
    cmd.arg("admin")
        .args(args)
        .output()
        .expect("paddock admin runs")
}

const LISTS: [&str; 4] = [
    "/api/v1/namespaces",
    "/api/v1/secrets",
    "/apis/paddock.io/v1alpha1/clusters",
    "/apis/paddock.io/v1alpha1/machineimages",
];

/// Every object of the compared kinds, at `rv` when given, without its
/// resourceVersion (a restore writes at the target store's revisions).
async fn objects(client: &kube::Client, rv: Option<u64>) -> Vec<Value> {
    let mut all = Vec::new();
    for path in LISTS {
        let q = match rv {
            Some(rv) => format!("{path}?resourceVersion={rv}&resourceVersionMatch=Exact"),
            None => path.to_owned(),
        };
        let req = http::Request::get(q).body(Vec::new()).expect("request");
        let list: Value = client.request(req).await.expect("list");
        for mut item in list["items"].as_array().cloned().unwrap_or_default() {
            if let Some(m) = item["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            all.push(item);
        }
    }
    all.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    all
}

fn etcd_args(etcd: &paddock_etcd::LocalCluster, prefix: &str) -> Vec<String> {
    let mut a = etcd_flags(etcd);
    a.push(format!("--etcd-prefix={prefix}"));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_etcd_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    let source = spawn(&first, &[]).await;
    register_stand_in_image(&source.client()).await;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(source.client())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "acme"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    let clusters: Api<paddock_api::Cluster> = Api::namespaced(source.client(), "acme");
    for i in 0..5 {
        clusters
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
                    "metadata": {"name": format!("c{i}")}, "spec": {}
                }))
                .expect("cluster"),
            )
            .await
            .expect("cluster");
    }
    // Writes go on while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (api, stop) = (
            Api::<Secret>::namespaced(source.client(), "acme"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut s = Secret::default();
                s.metadata.name = Some(format!("s{n}"));
                s.string_data = Some([("password".to_owned(), format!("hunter{n}"))].into());
                api.create(&PostParams::default(), &s)
                    .await
                    .expect("secret");
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = dir.path().join("paddock.backup");
    let out = admin(
        Some(&source.kubeconfig),
        &["backup", file.to_str().expect("path")],
    );
    assert!(out.status.success(), "backup: {}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    let (info, _) = paddock_store::backup::read(tokio::io::BufReader::new(
        tokio::fs::File::open(&file).await.expect("open backup"),
    ))
    .await
    .expect("a whole backup");
    let want = objects(&source.client(), Some(info.revision)).await;
    eprintln!(
        "backup: {} keys at revision {}; {} compared objects then, {written} Secrets written in all",
        info.keys,
        info.revision,
        want.len()
    );
    let now = objects(&source.client(), None).await;
    assert!(
        now.len() > want.len(),
        "writes went on after the backup's revision ({written} Secrets)"
    );
    assert!(
        stdout(&out).contains(&format!("at revision {}", info.revision)),
        "{}",
        stdout(&out)
    );
    // Sealed in the file as in the store.
    let raw = std::fs::read(&file).expect("backup bytes");
    assert!(
        !raw.windows(7).any(|w| w == b"hunter1"),
        "a Secret's value in the clear"
    );

    // Migration: into etcd, for a server there.
    let etcd = paddock_etcd::LocalCluster::start(&dir.path().join("etcd"), 1)
        .await
        .expect("etcd");
    let second = dir.path().join("second");
    paddock_apiserver::bootstrap::share(&first, &second).expect("share");
    let etcd_flags = etcd_args(&etcd, "/restored");
    let mut args = vec![
        "restore",
        file.to_str().expect("path"),
        "--data-dir",
        second.to_str().expect("path"),
    ];
    args.extend(etcd_flags.iter().map(String::as_str));
    let out = admin(None, &args);
    assert!(out.status.success(), "restore into etcd: {}", stderr(&out));
    // Not again into the same, now full, store.
    let again = admin(None, &args);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
    let on_etcd = spawn(&second, &etcd_flags).await;
    assert_eq!(
        objects(&on_etcd.client(), None).await,
        want,
        "etcd serves the backup's objects"
    );

    // And back into the embedded store of a new data directory.
    let file2 = dir.path().join("from-etcd.backup");
    let out = admin(
        Some(&on_etcd.kubeconfig),
        &["backup", file2.to_str().expect("path")],
    );
    assert!(out.status.success(), "backup from etcd: {}", stderr(&out));
    let third = dir.path().join("third");
    paddock_apiserver::bootstrap::share(&first, &third).expect("share");
    let out = admin(
        None,
        &[
            "restore",
            file2.to_str().expect("path"),
            "--data-dir",
            third.to_str().expect("path"),
        ],
    );
    assert!(
        out.status.success(),
        "restore into the embedded store: {}",
        stderr(&out)
    );
    let embedded = spawn(&third, &[]).await;
    assert_eq!(
        objects(&embedded.client(), None).await,
        want,
        "the embedded store serves them again"
    );
    // The restored Secrets open: their values are there.
    let s = Api::<Secret>::namespaced(embedded.client(), "acme")
        .get("s1")
        .await
        .expect("a restored Secret");
    assert_eq!(
        s.data.and_then(|d| d.get("password").cloned()).map(|b| b.0),
        Some(b"hunter1".to_vec())
    );

    // Refusals: a key that does not open the Secrets, a damaged file.
    let fourth = dir.path().join("fourth");
    std::fs::create_dir_all(&fourth).expect("dir");
    std::fs::write(fourth.join("secrets.key"), [7u8; 32]).expect("key");
    let out = admin(
        None,
        &[
            "restore",
            file.to_str().expect("path"),
            "--data-dir",
            fourth.to_str().expect("path"),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another key"), "{}", stderr(&out));
    let mut cut = std::fs::read(&file).expect("read");
    cut.truncate(cut.len() / 2);
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, cut).expect("write");
    let out = admin(
        None,
        &[
            "restore",
            damaged.to_str().expect("path"),
            "--data-dir",
            fourth.to_str().expect("path"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ends early") || stderr(&out).contains("damaged"),
        "{}",
        stderr(&out)
    );
    assert!(
        !fourth.join("store").exists(),
        "nothing was made for a refused restore"
    );
}
