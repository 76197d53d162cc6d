//! The web console end to end (root): `paddock dev up --hosts 2` (a real
//! server, agents and the gateway; VMs of the dev image), two
//! organizations with a tenant each, and a browser: Debian's Chromium,
//! headless, driven by Playwright from `tests/console/console.mjs`. Through
//! the pages alone a tenant signs in, creates a cluster with the form (an
//! invalid value shown beside its field first), watches it become Ready
//! without a reload, scales it and sees the new machine, downloads a
//! kubeconfig that kubectl then uses through the gateway, reads a machine's
//! console and deletes the cluster after a confirmation naming it. The
//! other organization's tenant sees none of it, the hosts page refuses a
//! tenant, the operator cordons a host, a page of another origin cannot
//! act with the session, and axe-core finds no serious accessibility
//! violation. Screenshots go to `docs/console/`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::lab::{Down, dev};
use common::*;
use kube::api::{Api, ListParams, PostParams};
use paddock_api::{Cluster, Machine};

fn node_tools() -> PathBuf {
    let dir = std::env::var_os("PADDOCK_NODE_TOOLS").map_or_else(
        || PathBuf::from("/var/cache/paddock/node-tools"),
        PathBuf::from,
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no playwright-core: run scripts/node-tools.sh {} (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_creates_watches_scales_and_deletes_a_cluster_through_the_console() {
    let tools = node_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("lab");
    let _down = Down(d.clone());
    let img = lab::dev_image();
    let out = dev(&[
        "up",
        "--hosts",
        "2",
        "--data-dir",
        d.to_str().expect("path"),
        "--image-dir",
        img.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "dev up: {}", stderr(&out));
    let server = d.join("server");
    let kc = server.join("admin.kubeconfig");
    for org in ["acme", "globex"] {
        paddock_ok(&kc, &["org", "create", org]);
    }
    let alice = paddock_apiserver::bootstrap::add_user(&server, "alice", &["org:acme".into()])
        .expect("alice");
    let bob = paddock_apiserver::bootstrap::add_user(&server, "bob", &["org:globex".into()])
        .expect("bob");
    let admin = std::fs::read_to_string(&kc).expect("admin kubeconfig");

    // Something of globex's for acme's tenant not to see.
    let client = client_for(&kc).await;
    let spec = serde_json::from_value(serde_json::json!({
        "controlPlane": {"replicas": 1, "cpu": 1, "memory": "256Mi", "disk": "2Gi"},
        "nodePools": []
    }))
    .expect("spec");
    Api::<Cluster>::namespaced(client.clone(), "globex")
        .create(&PostParams::default(), &Cluster::new("gx-secret", spec))
        .await
        .expect("globex's cluster");

    // The console on the gateway's management name too (the gateway passes
    // TLS through to the server: the same certificate, the same headers).
    let o = Command::new("curl")
        .args(["-sS", "-D", "-", "--cacert"])
        .arg(server.join("pki/ca.crt"))
        .args([
            "--resolve",
            "api.paddock.local:16443:127.0.0.1",
            "https://api.paddock.local:16443/",
        ])
        .output()
        .expect("curl");
    let page = stdout(&o);
    assert!(
        page.contains("content-security-policy: default-src 'none'")
            && page.contains("<title>Paddock</title>"),
        "the console through the gateway: {page}{}",
        stderr(&o)
    );

    let shots = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/console"));
    let work = dir.path().join("browser");
    std::fs::create_dir_all(&work).expect("work dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs");
    let t = std::time::Instant::now();
    let out = Command::new("node")
        .arg(script)
        .env("PADDOCK_NODE_TOOLS", &tools)
        .env("PADDOCK_URL", "https://127.0.0.1:6443")
        .env("PADDOCK_SERVER_CERT", server.join("pki/apiserver.crt"))
        .env("PADDOCK_CA", server.join("pki/ca.crt"))
        .env("PADDOCK_TOKEN_ADMIN", token_of(&admin))
        .env("PADDOCK_TOKEN_ALICE", token_of(&alice))
        .env("PADDOCK_TOKEN_BOB", token_of(&bob))
        .env("PADDOCK_SCREENSHOTS", &shots)
        .env("PADDOCK_WORK", &work)
        .env("PADDOCK_LAB", &d)
        .env("PADDOCK_BIN", env!("CARGO_BIN_EXE_paddock"))
        .env("PADDOCK_IMAGE_DIR", &img)
        .env("PADDOCK_ADMIN_KUBECONFIG", &kc)
        .output()
        .expect("node runs");
    println!("{}", stdout(&out));
    eprintln!("{}", stderr(&out));
    assert!(
        out.status.success(),
        "the browser test failed after {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        stderr(&out)
    );
    println!("browser test: {:.0}s", t.elapsed().as_secs_f64());

    // What the browser did, read back through the API: the cluster and its
    // machines are gone; nothing from another origin was created.
    // The other site's requests reached the server with alice's cookie (a
    // same-site request carries a SameSite=Strict cookie) and were refused
    // there, not only by the browser.
    let log = std::fs::read_to_string(d.join("server.log")).expect("server log");
    assert!(
        log.contains("a cross-site request may not use the console session"),
        "no refused cross-site request in the server's log"
    );
    let acme: Api<Cluster> = Api::namespaced(client.clone(), "acme");
    assert!(
        acme.get_opt("csrf").await.expect("get").is_none(),
        "a cross-origin request created a cluster"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let left = Api::<Machine>::namespaced(client.clone(), "acme")
            .list(&ListParams::default())
            .await
            .expect("machines")
            .items
            .len();
        let cluster = acme.get_opt("web").await.expect("get");
        if left == 0 && cluster.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the console's delete: {left} machines, cluster {cluster:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for name in [
        "sign-in",
        "clusters",
        "clusters-phone",
        "create-errors",
        "create-errors-phone",
        "cluster",
        "cluster-phone",
        "organizations",
        "hosts",
        "hosts-phone",
        "connection-lost",
    ] {
        let p = shots.join(format!("{name}.png"));
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            meta.len() > 5_000,
            "{} is {} bytes",
            p.display(),
            meta.len()
        );
    }
}
