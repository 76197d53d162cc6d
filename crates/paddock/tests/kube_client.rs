//! The API through kube-rs, the ecosystem's client: typed CRUD, selectors,
//! pagination, the status subresource, dry runs, watches with bookmarks and
//! `410 Gone`, and the controller runtime's watcher.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use kube::{Error, ResourceExt};
use paddock_api::machine::MachineSpec;
use paddock_api::{Cluster, ClusterSpec, Machine, MachineRole, Memory};
use serde_json::json;

async fn org(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create org");
}

fn machine(name: &str, host: Option<&str>, cluster: &str) -> Machine {
    let mut m = Machine::new(
        name,
        MachineSpec {
            cluster_name: cluster.into(),
            role: MachineRole::Worker,
            pool: Some("default".into()),
            cpu: 1,
            memory: Memory::from_mib(512),
            disk: Memory::from_gib(5),
            image: None,
            host_name: host.map(Into::into),
            mac: None,
            ip: None,
            bootstrap_secret: None,
        },
    );
    m.metadata.labels = Some([(paddock_api::LABEL_CLUSTER.to_owned(), cluster.to_owned())].into());
    m
}

fn api_code(e: Error) -> u16 {
    match e {
        Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_pagination_and_dry_run() {
    let s = TestServer::start().await;
    org(&s.client, "acme").await;
    let api: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    for i in 0..25 {
        let host = if i % 2 == 0 { "host-a" } else { "host-b" };
        let cluster = if i < 10 { "one" } else { "two" };
        api.create(
            &PostParams::default(),
            &machine(&format!("m{i:02}"), Some(host), cluster),
        )
        .await
        .expect("create");
    }
    let on_a = api
        .list(&ListParams::default().fields("spec.hostName=host-a"))
        .await
        .expect("field selector");
    assert_eq!(on_a.items.len(), 13);
    assert!(
        on_a.items
            .iter()
            .all(|m| m.spec.host_name.as_deref() == Some("host-a"))
    );
    let two_on_b = api
        .list(
            &ListParams::default()
                .labels("paddock.io/cluster=two")
                .fields("spec.hostName!=host-a"),
        )
        .await
        .expect("both selectors");
    assert_eq!(two_on_b.items.len(), 7);
    let set = api
        .list(&ListParams::default().labels("paddock.io/cluster in (one,three)"))
        .await
        .expect("set selector");
    assert_eq!(set.items.len(), 10);
    let bad = api
        .list(&ListParams::default().fields("spec.cpu=1"))
        .await
        .expect_err("unsupported field");
    assert_eq!(api_code(bad), 400);

    // limit/continue walks every object exactly once, at one resourceVersion.
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(7);
    let mut rvs = Vec::new();
    loop {
        let page = api.list(&lp).await.expect("page");
        names.extend(page.items.iter().map(ResourceExt::name_any));
        rvs.push(page.metadata.resource_version.clone());
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 25);
    assert_eq!(
        names,
        (0..25).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
    assert_eq!(rvs.len(), 4);
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "{rvs:?}");

    // dryRun=All validates and answers, but writes nothing.
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let dry = api
        .create(&pp, &machine("dry", None, "one"))
        .await
        .expect("dry run create");
    assert_eq!(dry.name_any(), "dry");
    assert!(api.get_opt("dry").await.expect("get").is_none());
    let dp = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    api.delete("m00", &dp).await.expect("dry run delete");
    assert!(api.get_opt("m00").await.expect("get").is_some());

    // deletecollection with a selector.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("paddock.io/cluster=one"),
    )
    .await
    .expect("deletecollection");
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        15
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_generation_and_conflicts() {
    let s = TestServer::start().await;
    org(&s.client, "acme").await;
    let api: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");
    let mut c = Cluster::new(
        "demo",
        ClusterSpec {
            ..serde_json::from_value(json!({})).expect("defaults")
        },
    );
    c.status = Some(paddock_api::ClusterStatus {
        nodes_ready: 9,
        ..Default::default()
    });
    let created = api
        .create(&PostParams::default(), &c)
        .await
        .expect("create");
    assert_eq!(created.status, None, "status is not settable on create");
    assert_eq!(created.metadata.generation, Some(1));

    // Status through /status; spec changes there are ignored.
    let st = json!({"spec": {"kubernetesVersion": "1.30.0"}, "status": {"phase": "Provisioning", "observedGeneration": 1, "nodesReady": 1}});
    let after = api
        .patch_status("demo", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .expect("patch status");
    assert_eq!(after.spec.kubernetes_version, "1.31.2");
    assert_eq!(
        after.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status does not bump generation"
    );

    // Status changes through the main resource are ignored; spec changes bump generation.
    let main = json!({"spec": {"ingress": {"httpNodePort": 30081}}, "status": {"phase": "Ready"}});
    let after = api
        .patch("demo", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .expect("patch");
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(
        after.status.as_ref().and_then(|s| s.phase),
        Some(paddock_api::ClusterPhase::Provisioning)
    );

    // Optimistic concurrency: a stale resourceVersion is a 409.
    let mut stale = after.clone();
    api.patch(
        "demo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .expect("label");
    stale.spec.control_plane.replicas = 3;
    let e = api
        .replace("demo", &PostParams::default(), &stale)
        .await
        .expect_err("stale replace");
    assert_eq!(api_code(e), 409);
    let e = api
        .replace_status("demo", &PostParams::default(), &stale)
        .await
        .expect_err("stale status");
    assert_eq!(api_code(e), 409);
    // With the current resourceVersion it goes through.
    let mut fresh = api.get("demo").await.expect("get");
    fresh.spec.control_plane.replicas = 3;
    let r = api
        .replace("demo", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(r.metadata.generation, Some(3));

    // Invalid updates are 422 with causes naming the field, and change nothing.
    let e = api
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"controlPlane": {"replicas": 2}}})),
        )
        .await
        .expect_err("invalid");
    match e {
        Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("spec.controlPlane.replicas"),
                "{}",
                s.message
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        api.get("demo")
            .await
            .expect("get")
            .spec
            .control_plane
            .replicas,
        3
    );
    let e = api
        .create(
            &PostParams::default(),
            &Cluster::new("Not_A_Name", c.spec.clone()),
        )
        .await
        .expect_err("bad name");
    assert_eq!(api_code(e), 422);
    let e = api
        .create(
            &PostParams::default(),
            &Cluster::new("demo", c.spec.clone()),
        )
        .await
        .expect_err("exists");
    assert_eq!(api_code(e), 409);
    let missing: Api<Cluster> = Api::namespaced(s.client.clone(), "nowhere");
    let e = missing
        .create(&PostParams::default(), &Cluster::new("x", c.spec.clone()))
        .await
        .expect_err("no org");
    assert_eq!(api_code(e), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_bookmarks_and_gone() {
    let s = TestServer::start_with(|c| {
        c.history = 20;
        // The watch cache keeps as few changes: an old resourceVersion is gone from both.
        c.watch_cache = Some(paddock_apiserver::cache::CacheOptions {
            history: 20,
            ..Default::default()
        });
        c.bookmark_every = Duration::from_millis(300);
    })
    .await;
    org(&s.client, "acme").await;
    let api: Api<Secret> = Api::namespaced(s.client.clone(), "acme");
    let start = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut w = api
        .watch(&WatchParams::default().labels("app=x"), &start)
        .await
        .expect("watch")
        .boxed();

    let mut sec = Secret::default();
    sec.metadata.name = Some("s1".into());
    sec.metadata.labels = Some([("app".to_owned(), "x".to_owned())].into());
    api.create(&PostParams::default(), &sec)
        .await
        .expect("create");
    api.patch(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"stringData": {"k": "v"}})),
    )
    .await
    .expect("patch");
    // Losing the label reads as a DELETED for this watcher.
    api.patch(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .expect("relabel");
    api.delete("s1", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    let mut bookmark = false;
    while seen.len() < 3 || !bookmark {
        match tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .expect("event in time")
            .expect("ok")
            .expect("open")
        {
            WatchEvent::Added(o) => seen.push(("ADDED", o.name_any())),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o.name_any())),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o.name_any())),
            WatchEvent::Bookmark(b) => bookmark = !b.metadata.resource_version.is_empty(),
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("ADDED", "s1".into()),
            ("MODIFIED", "s1".into()),
            ("DELETED", "s1".into())
        ]
    );

    // Push the history past `start`: resuming from it is 410 Gone.
    for i in 0..30 {
        let mut s2 = Secret::default();
        s2.metadata.name = Some(format!("n{i}"));
        api.create(&PostParams::default(), &s2)
            .await
            .expect("create");
    }
    // etcd keeps its history until it is compacted (the server does so
    // every 5 minutes): compact it now.
    if let Some(etcd) = &s.etcd {
        let mut c = etcd.client().await.expect("etcd client");
        let rev = c
            .get("/", None)
            .await
            .expect("read")
            .header()
            .expect("header")
            .revision();
        c.compact(rev, None).await.expect("compact");
    }
    let mut old = api
        .watch(&WatchParams::default(), &start)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), old.try_next())
        .await
        .expect("in time")
    {
        Ok(Some(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        Err(Error::Api(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }

    // The runtime watcher (list, then watch, relisting on 410) sees everything.
    let names: Vec<String> = watcher::watcher(api.clone(), watcher::Config::default())
        .take_while(|e| futures::future::ready(!matches!(e, Ok(watcher::Event::InitDone))))
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::InitApply(o)) => Some(o.name_any()),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(names.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_generate_name() {
    let s = TestServer::start().await;
    org(&s.client, "acme").await;
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");
    let owner = clusters
        .create(
            &PostParams::default(),
            &Cluster::new("demo", serde_json::from_value(json!({})).expect("spec")),
        )
        .await
        .expect("create");
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let mut m = machine("", None, "demo");
    m.metadata.name = None;
    m.metadata.generate_name = Some("demo-worker-".into());
    m.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "paddock.io/v1alpha1".into(),
            kind: "Cluster".into(),
            name: "demo".into(),
            uid: owner.uid().expect("uid"),
            block_owner_deletion: Some(true),
            controller: Some(true),
        },
    ]);
    let m = machines
        .create(&PostParams::default(), &m)
        .await
        .expect("create");
    assert!(
        m.name_any().starts_with("demo-worker-") && m.name_any().len() == "demo-worker-".len() + 5
    );

    clusters
        .delete("demo", &DeleteParams::orphan())
        .await
        .expect("orphan delete");
    let left = eventually(10, "owner to go", || async {
        match clusters.get_opt("demo").await.expect("get") {
            None => Some(machines.get(&m.name_any()).await.expect("machine stays")),
            Some(_) => None,
        }
    })
    .await;
    assert!(
        left.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "orphaned dependents lose the reference"
    );
}

/// A server with the org `acme` holding the Machines m00.. (`n` of them),
/// and the first page of their list, 5 at a time.
async fn paged_machines(n: usize) -> (TestServer, Api<Machine>, ObjectList<Machine>) {
    let s = TestServer::start().await;
    org(&s.client, "acme").await;
    let api: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    for i in 0..n {
        api.create(
            &PostParams::default(),
            &machine(&format!("m{i:02}"), None, "one"),
        )
        .await
        .expect("create");
    }
    let first = api
        .list(&ListParams::default().limit(5))
        .await
        .expect("first page");
    (s, api, first)
}

/// Writes race a paged list: every page is at the first page's revision
/// (the objects as they were then, nothing newer), and a watch started from
/// that revision sees every later change, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_are_one_snapshot() {
    let (_s, api, first) = paged_machines(30).await;
    let rv = first.metadata.resource_version.clone().expect("rv");
    let rv_n: u64 = rv.parse().expect("numeric rv");
    let mut seen: Vec<(String, String)> = first
        .items
        .iter()
        .map(|m| (m.name_any(), m.resource_version().unwrap_or_default()))
        .collect();
    let want: Vec<(String, String)> = seen.clone();
    let mut token = first.metadata.continue_.clone().expect("a second page");

    // A writer that changes the objects still to come while the pages are
    // fetched: updates, deletes, and creates before and after the cursor.
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut changes = 0usize;
            for i in 5..30 {
                let name = format!("m{i:02}");
                if i % 3 == 0 {
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .expect("delete");
                } else {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {"raced": "yes"}}})),
                    )
                    .await
                    .expect("patch");
                }
                changes += 1;
                api.create(
                    &PostParams::default(),
                    &machine(&format!("m{i:02}x"), None, "one"),
                )
                .await
                .expect("create");
                changes += 1;
            }
            changes
        })
    };
    loop {
        let page = api
            .list(&ListParams::default().limit(5).continue_token(&token))
            .await
            .expect("page");
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        for m in &page.items {
            let m_rv: u64 = m
                .resource_version()
                .unwrap_or_default()
                .parse()
                .expect("rv");
            assert!(
                m_rv <= rv_n,
                "{} is at {m_rv}, newer than the list's {rv_n}",
                m.name_any()
            );
            assert!(
                !m.labels().contains_key("raced"),
                "{} shows a later write",
                m.name_any()
            );
            seen.push((m.name_any(), m.resource_version().unwrap_or_default()));
        }
        // Let the writer get ahead between pages.
        tokio::time::sleep(Duration::from_millis(20)).await;
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => token = c,
            _ => break,
        }
    }
    let changes = writer.await.expect("writer");
    let names: Vec<String> = seen.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        (0..30).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
    assert!(want.iter().all(|w| seen.contains(w)));

    // A watch from the list's revision sees every change made since.
    let mut w = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut events = 0;
    let mut last = rv_n;
    while events < changes {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.try_next())
            .await
            .expect("an event within 10 s")
            .expect("watch stream")
            .expect("not ended");
        let m = match ev {
            WatchEvent::Added(m) | WatchEvent::Modified(m) | WatchEvent::Deleted(m) => m,
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        };
        let m_rv: u64 = m
            .resource_version()
            .unwrap_or_default()
            .parse()
            .expect("rv");
        assert!(m_rv > last, "events in revision order");
        last = m_rv;
        events += 1;
    }
    assert_eq!(events, changes);
}

/// Pages of a list whose objects do not change between pages: each counts
/// what is left; a write elsewhere between pages changes nothing; a write
/// to the listed objects after that still leaves the pages at the first
/// page's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_paged_lists_count_what_is_left() {
    let (s, api, first) = paged_machines(12).await;
    let rv = first.metadata.resource_version.clone().expect("rv");
    assert_eq!(first.metadata.remaining_item_count, Some(7));
    // Another resource changes: the Machines' pages are unaffected.
    org(&s.client, "other").await;
    let second = api
        .list(
            &ListParams::default()
                .limit(5)
                .continue_token(first.metadata.continue_.as_deref().expect("token")),
        )
        .await
        .expect("second page");
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(second.metadata.remaining_item_count, Some(2));
    // A Machine changes: the last page is still read at the first's revision.
    api.delete("m11", &DeleteParams::default())
        .await
        .expect("delete");
    let third = api
        .list(
            &ListParams::default()
                .limit(5)
                .continue_token(second.metadata.continue_.as_deref().expect("token")),
        )
        .await
        .expect("third page");
    assert_eq!(
        third.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(third.metadata.continue_.as_deref().unwrap_or(""), "");
    let names: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p.items.iter().map(ResourceExt::name_any))
        .collect();
    assert_eq!(
        names,
        (0..12).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
}

/// `/readyz` fails, naming the task, once a background task is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_controllers_die() {
    let s = TestServer::start()
        .await
        .with_controllers(paddock_controllers::Config::default());
    let ca = s.data_dir().join("pki/ca.crt");
    let readyz = |verbose: bool| {
        let url = format!(
            "{}/readyz{}",
            s.url(),
            if verbose { "?verbose" } else { "" }
        );
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_code}", &url])
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = readyz(true);
    assert_eq!(code, "200", "{body}");
    for c in ["cluster-controller", "scheduler", "host-health"] {
        assert!(body.contains(&format!("[+]{c} ok")), "{body}");
    }
    assert!(body.contains("[+]store ok"), "{body}");
    s.running
        .as_ref()
        .expect("running")
        .tasks
        .abort("scheduler");
    let (code, body) = eventually(5, "readyz to fail", || {
        let r = readyz(false);
        async move { (r.0 == "503").then_some(r) }
    })
    .await;
    assert_eq!(code, "503");
    assert!(
        body.contains("[-]scheduler failed: task was aborted"),
        "{body}"
    );
    assert!(body.contains("[+]garbage-collector ok"), "{body}");
}

/// POSTs a binding of `acme/name` to `host` as `client`: the status code.
async fn bind(client: &kube::Client, name: &str, host: &str) -> Result<Machine, u16> {
    let req = http::Request::post(format!(
        "/apis/paddock.io/v1alpha1/namespaces/acme/machines/{name}/binding"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&json!({"target": {"name": host}})).expect("json"))
    .expect("request");
    client.request::<Machine>(req).await.map_err(api_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_is_one_write_and_never_binds_twice() {
    let s = TestServer::start().await;
    org(&s.client, "acme").await;
    let api: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let m = api
        .create(&PostParams::default(), &machine("m1", None, "demo"))
        .await
        .expect("create");
    let before: u64 = m.resource_version().expect("rv").parse().expect("number");
    let bound = bind(&s.client, "m1", "h1").await.expect("bound");
    assert_eq!(bound.spec.host_name.as_deref(), Some("h1"));
    let after: u64 = bound
        .resource_version()
        .expect("rv")
        .parse()
        .expect("number");
    assert_eq!(after, before + 1, "host, condition and phase in one write");
    let st = bound.status.expect("status");
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .expect("Scheduled");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Bound"));
    assert_eq!(c.observed_generation, bound.metadata.generation);
    // A second binding, to any host, is refused.
    assert_eq!(bind(&s.client, "m1", "h2").await.err(), Some(409));
    assert_eq!(
        api.get("m1").await.expect("get").spec.host_name.as_deref(),
        Some("h1")
    );
    assert_eq!(bind(&s.client, "nope", "h1").await.err(), Some(404));
    // Tenants do not place their Machines.
    let kc = s.data_dir().join("alice.kubeconfig");
    std::fs::write(
        &kc,
        paddock_apiserver::bootstrap::add_user(&s.data_dir(), "alice", &["org:acme".into()])
            .expect("user"),
    )
    .expect("write");
    api.create(&PostParams::default(), &machine("m2", None, "demo"))
        .await
        .expect("create");
    let alice = client_for(&kc).await;
    assert_eq!(bind(&alice, "m2", "h1").await.err(), Some(403));
    assert_eq!(
        api.get("m2").await.expect("get").spec.host_name,
        None,
        "nothing was written"
    );
}
