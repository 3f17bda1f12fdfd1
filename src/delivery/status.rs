//! Whether delivery is running, shared by the worker's supervisor (which sets it) and
//! `/health` (which reports it): a worker that panicked is restarting, not running.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The delivery worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No `[pega] endpoint`: events wait in the outbox.
    NotConfigured,
    /// Not started yet, or stopped (shutdown).
    Stopped,
    Running,
    /// It panicked and restarts shortly.
    Restarting,
}

/// Shared state of the delivery worker.
#[derive(Debug)]
pub struct DeliveryStatus {
    state: AtomicU8,
    /// Why it last stopped unexpectedly.
    last_failure: Mutex<Option<String>>,
}

impl DeliveryStatus {
    /// A status starting in `state`.
    pub fn new(state: WorkerState) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            last_failure: Mutex::new(None),
        }
    }

    /// The current state.
    pub fn state(&self) -> WorkerState {
        match self.state.load(Ordering::Acquire) {
            0 => WorkerState::NotConfigured,
            1 => WorkerState::Stopped,
            2 => WorkerState::Running,
            _ => WorkerState::Restarting,
        }
    }

    /// Sets the state.
    pub fn set(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Records a panic: restarting, with its message.
    pub fn failed(&self, why: String) {
        *self.last_failure.lock().expect("not poisoned") = Some(why);
        self.set(WorkerState::Restarting);
    }

    /// The message of the last panic, if any.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().expect("not poisoned").clone()
    }
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
