//! Supervised background tasks. Every one (delivery, mail, retention, and those to come),
//! started by [`crate::app`], runs under
//! [`supervise`], the same way: a panic is caught and logged, the task shows `restarting` on
//! `/health` (503) and is counted in `pegabridge_task_restarts_total{task}`, and it starts
//! again after [`RESTART_DELAY`]. A task that returns has stopped (on shutdown).

use futures::FutureExt;
use prometheus::IntCounterVec;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a task that panicked waits before it starts again.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// A task's state, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    /// It panicked and starts again shortly.
    Restarting,
    /// Not started yet, or stopped (shutdown).
    Stopped,
}

/// One task's state and why it last stopped unexpectedly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    pub state: TaskState,
    pub last_failure: Option<String>,
}

/// The tasks of this process and their states (shared with `/health`).
#[derive(Debug)]
pub struct Tasks {
    states: Mutex<BTreeMap<&'static str, TaskStatus>>,
    restarts: IntCounterVec,
}

impl Tasks {
    /// Tasks counting their restarts in `restarts` (labelled by task).
    pub fn new(restarts: IntCounterVec) -> Self {
        Self {
            states: Mutex::default(),
            restarts,
        }
    }

    /// Registers a task before it starts (it shows `stopped` until it runs).
    pub fn register(&self, name: &'static str) {
        self.set(name, TaskState::Stopped, None);
    }

    /// Marks every registered task running: called as they are spawned, so `/health` does
    /// not answer 503 before their first poll.
    pub fn start_all(&self) {
        for status in self.lock().values_mut() {
            status.state = TaskState::Running;
        }
    }

    /// The state of the task called `name`, if there is one.
    pub fn status(&self, name: &str) -> Option<TaskStatus> {
        self.lock().get(name).cloned()
    }

    /// Every task, by name.
    pub fn all(&self) -> BTreeMap<&'static str, TaskStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, TaskStatus>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, name: &'static str, state: TaskState, failure: Option<String>) {
        let mut states = self.lock();
        let entry = states.entry(name).or_insert(TaskStatus {
            state,
            last_failure: None,
        });
        entry.state = state;
        if failure.is_some() {
            entry.last_failure = failure;
        }
    }
}

/// Tells tasks to stop: a task's future awaits `cancelled()` (or checks `is_cancelled()`).
pub type Stop = tokio_util::sync::CancellationToken;

/// Runs the task `make` builds until it returns, restarting it after a panic (see the
/// module's notes). `make` is called again for each start, with the stop signal.
pub async fn supervise<F, Fut>(name: &'static str, tasks: Arc<Tasks>, stop: Stop, mut make: F)
where
    F: FnMut(Stop) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tasks.set(name, TaskState::Running, None);
        let run = std::panic::AssertUnwindSafe(make(stop.clone())).catch_unwind();
        match run.await {
            Ok(()) => break,
            Err(panic) => {
                let why = panic_message(&*panic);
                tracing::error!(
                    task = name,
                    panic = why.as_str(),
                    restart_in_secs = RESTART_DELAY.as_secs(),
                    "a background task panicked: restarting it"
                );
                tasks.restarts.with_label_values(&[name]).inc();
                tasks.set(name, TaskState::Restarting, Some(why));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RESTART_DELAY) => {}
                }
            }
        }
    }
    tasks.set(name, TaskState::Stopped, None);
}

/// A panic payload's message.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tasks() -> Arc<Tasks> {
        let restarts = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["task"]).unwrap();
        Arc::new(Tasks::new(restarts))
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_counted_and_shown_until_it_stops() {
        let tasks = tasks();
        let stop = Stop::new();
        let trigger = stop.clone();
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let task = tokio::spawn(supervise("t", tasks.clone(), stop, move |stop| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("fault {n}");
                }
                stop.cancelled().await;
            }
        }));
        // The first start panics at once: restarting, with its message, until the delay.
        tokio::task::yield_now().await;
        let status = tasks.status("t").unwrap();
        assert_eq!(status.state, TaskState::Restarting);
        assert_eq!(status.last_failure.as_deref(), Some("fault 0"));
        // Each restart waits its delay: step the paused clock until the third start runs.
        for _ in 0..10 {
            if tasks.status("t").unwrap().state == TaskState::Running {
                break;
            }
            tokio::time::advance(RESTART_DELAY).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.status("t").unwrap().state, TaskState::Running);
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(tasks.restarts.with_label_values(&["t"]).get(), 2);
        trigger.cancel();
        task.await.unwrap();
        assert_eq!(tasks.status("t").unwrap().state, TaskState::Stopped);
    }
}
