//! The server's background tasks, supervised: each runs under a name, and
//! when one ends — an error, a panic, an abort, or a loop that returned —
//! the reason is logged and `/readyz` fails, naming it, until the process
//! is restarted. Nothing a server needs dies silently.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::{AbortHandle, JoinHandle};

/// The supervised tasks of one server.
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Mutex<Vec<Entry>>>,
}

struct Entry {
    name: String,
    abort: AbortHandle,
    /// Why it ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
    supervisor: JoinHandle<()>,
}

/// A task's state, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub name: String,
    /// `None` while it runs; else why it ended.
    pub ended: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is replaced whole; a panic cannot tear it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tasks {
    /// Runs `fut`, meant to run for the server's lifetime, under `name`.
    pub fn spawn<F, E>(&self, name: &str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let task = tokio::spawn(async move { fut.await.map_err(|e| e.to_string()) });
        let abort = task.abort_handle();
        let ended = Arc::new(Mutex::new(None));
        let (record, task_name) = (ended.clone(), name.to_owned());
        let supervisor = tokio::spawn(async move {
            let why = match task.await {
                Ok(Ok(())) => "returned".to_owned(),
                Ok(Err(e)) => format!("failed: {e}"),
                Err(e) if e.is_cancelled() => "was aborted".to_owned(),
                Err(e) => match e.try_into_panic() {
                    Ok(p) => {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into());
                        format!("panicked: {msg}")
                    }
                    Err(_) => "ended".to_owned(),
                },
            };
            tracing::error!(task = %task_name, reason = %why, "background task ended; the server is not ready");
            *lock(&record) = Some(why);
        });
        lock(&self.inner).push(Entry {
            name: name.to_owned(),
            abort,
            ended,
            supervisor,
        });
    }

    /// Runs a loop that never returns by design under `name`.
    pub fn spawn_loop<F>(&self, name: &str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            fut.await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Every task and whether it still runs.
    pub fn states(&self) -> Vec<TaskState> {
        lock(&self.inner)
            .iter()
            .map(|e| TaskState {
                name: e.name.clone(),
                ended: lock(&e.ended).clone(),
            })
            .collect()
    }

    /// Stops the task named `name` (it then counts as ended).
    pub fn abort(&self, name: &str) {
        for e in lock(&self.inner).iter().filter(|e| e.name == name) {
            e.abort.abort();
        }
    }

    /// Stops every task, for shutdown.
    pub fn shutdown(&self) {
        for e in lock(&self.inner).drain(..) {
            e.supervisor.abort();
            e.abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ended(t: &Tasks, name: &str) -> Option<String> {
        for _ in 0..100 {
            let s = t.states().into_iter().find(|s| s.name == name)?;
            if s.ended.is_some() {
                return s.ended;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    #[tokio::test]
    async fn every_way_a_task_ends_is_recorded() {
        let t = Tasks::default();
        t.spawn("forever", async {
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        t.spawn("fails", async { Err::<(), _>("the store went away") });
        t.spawn("panics", async {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        t.spawn("returns", async { Ok::<(), String>(()) });
        assert_eq!(
            ended(&t, "fails").await.as_deref(),
            Some("failed: the store went away")
        );
        assert_eq!(ended(&t, "panics").await.as_deref(), Some("panicked: boom"));
        assert_eq!(ended(&t, "returns").await.as_deref(), Some("returned"));
        let forever = t.states().into_iter().find(|s| s.name == "forever");
        assert_eq!(forever.and_then(|s| s.ended), None);
        t.abort("forever");
        assert_eq!(ended(&t, "forever").await.as_deref(), Some("was aborted"));
        t.shutdown();
        assert!(t.states().is_empty());
    }
}
