//! Watched caches of API objects for Paddock's level-triggered loops (the
//! host agent, the scheduler, the gateway): a kube-rs reflector store kept
//! current by a watch, which pokes a [`Notify`] on every change so the loop
//! runs again. Objects are kept without their `managedFields` ([`lean`]).

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What can be watched into a store: any cluster- or namespace-scoped API type.
pub trait Watchable:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Drops what a loop never reads from a watched object before it is kept:
/// its `managedFields` (a tree of every field and who set it, often the
/// largest part of an object, and cloned with it on every read).
pub fn lean<K: kube::Resource>(k: &mut K) {
    k.meta_mut().managed_fields = None;
}

/// A store of every `K` that `api` sees, and the task that keeps it
/// current (it retries with backoff and runs until aborted). `notify` is
/// poked on every change.
pub fn store<K: Watchable>(api: Api<K>, notify: Arc<Notify>) -> (Store<K>, JoinHandle<()>) {
    store_selected(api, watcher::Config::default(), notify)
}

/// [`store`] of the objects that `selected` (label and field selectors) picks.
pub fn store_selected<K: Watchable>(
    api: Api<K>,
    selected: watcher::Config,
    notify: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, selected)
            .modify(lean::<K>)
            .default_backoff(),
    )
    .touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "watch error; retrying");
            }
            notify.notify_one();
        }
    });
    (reader, task)
}

/// Watch tasks that end with their owner: aborted when this is dropped
/// (a loop that is itself aborted leaves no watcher behind).
#[derive(Default)]
pub struct Watchers(Vec<JoinHandle<()>>);

impl Watchers {
    /// Keeps another task, to be aborted with the rest.
    pub fn keep(&mut self, task: JoinHandle<()>) {
        self.0.push(task);
    }

    /// [`store`], with its task kept here.
    pub fn store<K: Watchable>(&mut self, api: Api<K>, notify: Arc<Notify>) -> Store<K> {
        self.store_selected(api, watcher::Config::default(), notify)
    }

    /// [`store_selected`], with its task kept here.
    pub fn store_selected<K: Watchable>(
        &mut self,
        api: Api<K>,
        selected: watcher::Config,
        notify: Arc<Notify>,
    ) -> Store<K> {
        let (s, task) = store_selected(api, selected, notify);
        self.0.push(task);
        s
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
