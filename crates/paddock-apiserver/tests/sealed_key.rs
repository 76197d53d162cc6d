//! The key that seals Secrets is never silently replaced: with sealed
//! Secrets in the store and the key file gone, the server refuses to start
//! (and says which file to restore); with the key back, the Secret reads.

use std::time::Duration;

use paddock_apiserver::api::WriteOptions;
use paddock_apiserver::{ServerConfig, ServerError, resources, start};
use serde_json::json;

async fn start_until_unlocked(
    cfg: &ServerConfig,
) -> Result<paddock_apiserver::Running, ServerError> {
    // The previous server's store closes when its last task has gone.
    for _ in 0..100 {
        match start(cfg.clone()).await {
            Err(ServerError::Store(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return other,
        }
    }
    start(cfg.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_stops_the_server_instead_of_orphaning_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let secrets = resources::find("", "v1", "secrets").unwrap();
    let running = start(cfg.clone()).await.expect("first start");
    running
        .api
        .create(
            secrets,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ca"}, "stringData": {"k": "v"}}),
            WriteOptions::default(),
        )
        .await
        .expect("secret");
    running.shutdown();

    let key = dir.path().join("data/secrets.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = match start_until_unlocked(&cfg).await {
        Ok(_) => panic!("started without the key that seals its Secrets"),
        Err(e) => paddock_apiserver::error::chain(&e),
    };
    assert!(
        err.contains("secrets.key") && err.contains("sealed"),
        "{err}"
    );
    assert!(!key.exists(), "no new key was made");

    std::fs::write(&key, saved).unwrap();
    let running = start_until_unlocked(&cfg)
        .await
        .expect("starts with the key back");
    let s = running
        .api
        .get(secrets, Some("default"), "ca")
        .await
        .expect("reads");
    assert_eq!(s["data"]["k"], "dg==");
    running.shutdown();
}
