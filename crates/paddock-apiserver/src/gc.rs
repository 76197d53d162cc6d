//! Garbage collection and namespace lifecycle, as in Kubernetes: dependents
//! whose owners are gone are deleted; foreground and orphan deletions are
//! completed; a terminating namespace is emptied, then removed. Level
//! triggered: every pass reads the whole store and takes the steps due.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{Api, DeleteOptions, decode};
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::resources::{self, Resource};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

struct Item {
    res: &'static Resource,
    obj: Value,
}

impl Item {
    fn ns(&self) -> Option<&str> {
        object::namespace(&self.obj)
    }
    fn name(&self) -> &str {
        object::name(&self.obj).unwrap_or_default()
    }
}

/// Runs passes after changes (debounced) and at least every `resync`.
pub async fn run(api: Api, resync: Duration) {
    let mut watch = match api.store.watch("/registry/", api.store.revision()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "garbage collector cannot watch; resyncing only");
            None
        }
    };
    loop {
        if let Err(e) = pass(&api).await {
            tracing::warn!(error = %e, "garbage collection pass failed");
        }
        // Only a deletion, or an object marked for deletion, can give the
        // collector work; anything else waits for the resync.
        let changed = async {
            match watch.as_mut() {
                Some(w) => loop {
                    match w.next().await {
                        None => break false,
                        Some(Ok(ev)) if creates_work(&ev) => break true,
                        Some(Err(_)) => break false,
                        Some(Ok(_)) => {}
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = changed => {
                if !alive {
                    watch = api.store.watch("/registry/", api.store.revision()).ok();
                }
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some(w) = watch.as_mut() {
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, w.next()).await {}
                }
            }
            _ = tokio::time::sleep(resync) => {}
        }
    }
}

fn creates_work(ev: &paddock_store::Event) -> bool {
    match ev {
        paddock_store::Event::Delete { .. } => true,
        paddock_store::Event::Put { kv, .. } => {
            kv.value.windows(17).any(|w| w == b"deletionTimestamp")
        }
    }
}

async fn load(api: &Api) -> ApiResult<Vec<Item>> {
    let page = api.store.list("/registry/", None, None, None).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for kv in &page.items {
        let obj = decode(kv)?;
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        if let Some(res) = resources::by_kind(av, kind) {
            items.push(Item { res, obj });
        }
    }
    Ok(items)
}

fn ignore_gone(r: ApiResult<()>) -> ApiResult<()> {
    match r {
        Err(ApiError::NotFound(_)) => Ok(()),
        other => other,
    }
}

async fn delete(api: &Api, it: &Item) -> ApiResult<()> {
    if object::is_deleting(&it.obj) {
        return Ok(());
    }
    tracing::info!(kind = it.res.kind, namespace = ?it.ns(), name = it.name(), "garbage collecting");
    ignore_gone(
        api.delete(it.res, it.ns(), it.name(), &DeleteOptions::default())
            .await
            .map(drop),
    )
}

async fn drop_finalizer(api: &Api, it: &Item, fin: &str) -> ApiResult<()> {
    ignore_gone(
        api.modify(it.res, it.ns(), it.name(), |o| {
            let mut f = object::finalizers(o);
            let before = f.len();
            f.retain(|x| x != fin);
            object::set_finalizers(o, &f);
            f.len() != before
        })
        .await
        .map(drop),
    )
}

/// One level-triggered pass over everything.
pub async fn pass(api: &Api) -> ApiResult<()> {
    let items = load(api).await?;
    let by_uid: HashMap<&str, &Item> = items
        .iter()
        .filter_map(|i| Some((object::uid(&i.obj)?, i)))
        .collect();
    // Owners that still have dependents, and which of those block deletion.
    let mut has_dependents: HashSet<&str> = HashSet::new();
    let mut blocked: HashSet<&str> = HashSet::new();

    for it in &items {
        let owners = object::owners(&it.obj);
        if owners.is_empty() {
            continue;
        }
        // As in Kubernetes, an owner in another namespace does not count
        // (namespaced dependents treat it as absent; a cluster-scoped
        // dependent cannot resolve a namespaced owner and is kept), so no
        // one can hold up deletions across namespaces.
        let existing: Vec<_> = owners
            .iter()
            .filter_map(|o| Some((o, *by_uid.get(o.0.as_str())?)))
            .collect();
        let live: Vec<_> = existing
            .iter()
            .copied()
            .filter(|(_, owner)| owner.ns().is_none() || owner.ns() == it.ns())
            .collect();
        if live.is_empty() {
            if it.ns().is_some() || existing.is_empty() {
                delete(api, it).await?;
            }
            continue;
        }
        let mut orphaned_by = Vec::new();
        for ((uid, _, _, block), owner) in &live {
            let fins = object::finalizers(&owner.obj);
            if object::is_deleting(&owner.obj) && fins.iter().any(|f| f == ORPHAN) {
                orphaned_by.push(uid.clone());
                continue;
            }
            has_dependents.insert(object::uid(&owner.obj).unwrap_or_default());
            if *block {
                blocked.insert(object::uid(&owner.obj).unwrap_or_default());
            }
            if object::is_deleting(&owner.obj) && fins.iter().any(|f| f == FOREGROUND) {
                delete(api, it).await?;
            }
        }
        if !orphaned_by.is_empty() {
            ignore_gone(
                api.modify(it.res, it.ns(), it.name(), |o| {
                    let Some(refs) = object::meta_mut(o)
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    else {
                        return false;
                    };
                    refs.retain(|r| {
                        !orphaned_by
                            .iter()
                            .any(|u| r.get("uid").and_then(Value::as_str) == Some(u))
                    });
                    if refs.is_empty() {
                        object::meta_mut(o).remove("ownerReferences");
                    }
                    true
                })
                .await
                .map(drop),
            )?;
        }
    }

    for it in items.iter().filter(|i| object::is_deleting(&i.obj)) {
        let uid = object::uid(&it.obj).unwrap_or_default();
        let fins = object::finalizers(&it.obj);
        if fins.iter().any(|f| f == FOREGROUND) && !blocked.contains(uid) {
            drop_finalizer(api, it, FOREGROUND).await?;
        }
        if fins.iter().any(|f| f == ORPHAN) && !has_dependents.contains(uid) {
            // Dependents were released above; the next pass sees none left.
            let still = items
                .iter()
                .any(|d| object::owners(&d.obj).iter().any(|o| o.0 == uid));
            if !still {
                drop_finalizer(api, it, ORPHAN).await?;
            }
        }
    }

    // Terminating namespaces: delete their contents, then let them go.
    for ns in items
        .iter()
        .filter(|i| i.res.is("", "namespaces") && object::is_deleting(&i.obj))
    {
        let name = ns.name();
        let content: Vec<&Item> = items
            .iter()
            .filter(|i| i.res.namespaced && i.ns() == Some(name))
            .collect();
        for it in &content {
            delete(api, it).await?;
        }
        if content.is_empty()
            && object::spec_finalizers(&ns.obj)
                .iter()
                .any(|f| f == "kubernetes")
        {
            tracing::info!(namespace = name, "namespace empty; finalizing");
            ignore_gone(
                api.modify(ns.res, None, name, |o| {
                    o["spec"]["finalizers"] = json!([]);
                    true
                })
                .await
                .map(drop),
            )?;
        }
    }
    Ok(())
}
