//! Fan-out of committed changes to watchers, with a bounded history so a
//! watcher can resume from a recent revision.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, mpsc};

use crate::{Event, Revision, StoreError};

/// The changes a watch has yet to send, and the channel of those after.
type Followed = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Committed changes, newest last, and the live channel.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

struct Inner {
    history: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Revisions up to and including this one are no longer in `history`.
    compacted: Revision,
    current: Revision,
    live: broadcast::Sender<Arc<Event>>,
}

/// A stream of changes under a prefix. Ends with an error if the watcher
/// falls too far behind; the caller then starts again from a list.
pub struct Watch {
    rx: mpsc::Receiver<Result<Arc<Event>, StoreError>>,
}

impl Watch {
    /// A watch fed by another backend's task.
    pub(crate) fn from_channel(rx: mpsc::Receiver<Result<Arc<Event>, StoreError>>) -> Self {
        Self { rx }
    }

    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        self.rx.recv().await
    }

    /// The same changes with `f` applied to each (for value transformers).
    /// Must be called inside a tokio runtime.
    pub fn map<F>(mut self, f: F) -> Watch
    where
        F: Fn(&Event) -> Result<Event, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.rx.max_capacity().max(1));
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = self.rx.recv() => item,
                    // The consumer went away: stop now, not at the next change.
                    _ = tx.closed() => return,
                };
                let Some(item) = item else { return };
                let out = item.and_then(|e| f(&e).map(Arc::new));
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
        Watch { rx }
    }
}

impl Hub {
    pub(crate) fn new(history: Vec<Event>, capacity: usize, current: Revision) -> Self {
        let compacted = history
            .first()
            .map_or(current, |e| e.revision().saturating_sub(1));
        let (live, _) = broadcast::channel(4096);
        let history = history.into_iter().map(Arc::new).collect();
        Self {
            inner: Mutex::new(Inner {
                history,
                capacity,
                compacted,
                current,
                live,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent data (pushes are atomic).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn current(&self) -> Revision {
        self.lock().current
    }

    /// Records committed events, in revision order.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        let mut g = self.lock();
        for ev in events {
            let ev = Arc::new(ev);
            g.current = g.current.max(ev.revision());
            g.history.push_back(ev.clone());
            while g.history.len() > g.capacity {
                if let Some(old) = g.history.pop_front() {
                    g.compacted = old.revision();
                }
            }
            // No receivers is fine.
            let _ = g.live.send(ev);
        }
    }

    /// The changes after `after` that `history` still holds, under
    /// `prefix`, and a subscription to the ones that follow, taken under
    /// one lock so that none falls between them.
    fn follow(&self, prefix: &str, after: Revision) -> Result<Followed, StoreError> {
        let g = self.lock();
        if after < g.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: g.compacted + 1,
            });
        }
        let live = g.live.subscribe();
        let backlog = g
            .history
            .iter()
            .filter(|e| e.revision() > after && e.key().starts_with(prefix))
            .cloned()
            .collect();
        Ok((backlog, live))
    }

    pub(crate) fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after: Revision,
    ) -> Result<Watch, StoreError> {
        let (mut backlog, mut live) = self.follow(prefix, after)?;
        let (tx, rx) = mpsc::channel(1024);
        let prefix = prefix.to_owned();
        let hub = self.clone();
        tokio::spawn(async move {
            let mut last = after;
            loop {
                for ev in std::mem::take(&mut backlog) {
                    last = ev.revision();
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    msg = live.recv() => match msg {
                        Ok(ev) => {
                            if ev.revision() <= last || !ev.key().starts_with(&prefix) {
                                continue;
                            }
                            last = ev.revision();
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                        // A burst outran the live channel: what was missed
                        // is read again from the history, which keeps far
                        // more; only a watcher behind even that must list.
                        Err(broadcast::error::RecvError::Lagged(_)) => match hub.follow(&prefix, last) {
                            Ok((missed, again)) => {
                                backlog = missed;
                                live = again;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Watch { rx })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::KeyValue;

    fn put(rev: Revision) -> Event {
        Event::Put {
            kv: KeyValue {
                key: format!("/k/{rev}"),
                value: Bytes::from_static(b"v"),
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    /// A watcher that reads nothing while a burst far larger than the live
    /// channel is published still gets every change, in order, from the
    /// history; one behind the history too gets `Compacted`.
    #[tokio::test]
    async fn a_watcher_outrun_by_a_burst_catches_up_from_the_history() {
        let hub = Arc::new(Hub::new(Vec::new(), 50_000, 0));
        let mut w = hub.watch("/k/", 0).expect("watch");
        hub.publish((1..=20_000).map(put).collect());
        for want in 1..=20_000 {
            let ev = w.next().await.expect("open").expect("no error");
            assert_eq!(ev.revision(), want);
        }

        let small = Arc::new(Hub::new(Vec::new(), 5_000, 0));
        let mut w = small.watch("/k/", 0).expect("watch");
        small.publish((1..=20_000).map(put).collect());
        let mut last = 0;
        let end = loop {
            match w.next().await.expect("open") {
                Ok(ev) => last = ev.revision(),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(end, StoreError::Compacted { requested, .. } if requested == last),
            "{end:?} after {last}"
        );
    }
}
