//! Group commit for the intake: activities of requests that arrive together are recorded in
//! one transaction.
//!
//! A request's activities join a queue. The first request to find no commit running starts
//! one (a task of its own, so a client that hangs up cannot cancel the others' commit): it
//! waits until the `[store] group_commit_ms` window after the first queued request's arrival
//! has passed or [`MAX_ACTIVITIES`] are queued, records everything queued (of one
//! [`Unknown`] policy) in one transaction, answers each request with its own outcomes, and
//! goes on while requests are queued. No request waits more than the window plus the
//! commits before it. Under load the window has mostly passed while the previous commit ran;
//! at moderate rates it gathers the requests of a few milliseconds into one commit (one WAL
//! flush, one round of `BEGIN`/`COMMIT`). (The SQLite store also commits all the work
//! waiting at each moment in one transaction, without a window, for every kind of work; this
//! group is the intake's, on both backends, and the only one on PostgreSQL.)
//!
//! The window is not waited out when nobody could join: when every connection of the HTTP
//! server that sent a request lately has one queued here ([`Connections`]; an HTTP/1.1
//! connection carries one request at a time, and its client waits for the answer before it
//! sends the next), the group commits at once. Without that, a client sending one request
//! at a time, or a few clients with a connection each, waited the window on every request
//! for nobody: 16 clients got 1,900 activities a second through a 5 ms window.
//!
//! A request's answer is as before: its outcomes in its order, or its own error. When a
//! group fails on what one request sent (an unknown personal broadcast it refuses), each
//! request is recorded alone again, so only that one fails; when the store fails, every
//! request of the group gets the error and nothing of the group was written.

use super::Storage;
use crate::activity::Activity;
use crate::outbox::error::{Result, StoreError};
use crate::recording::{ActivityOutcome, Unknown};
use futures::FutureExt;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The most activities one group commit records (a single request's batch may be larger and
/// is then recorded alone).
pub const MAX_ACTIVITIES: usize = 256;

/// How long a connection that sent no request counts as still in use ([`Connections`]):
/// between one and two of these.
pub const RECENT: Duration = Duration::from_secs(1);

/// The HTTP server's connections, as far as the group commit needs them: how many sent a
/// request lately. The accept loop makes a [`Connection`] per connection and tells it of
/// each request. A client's pool often keeps a connection or two more than it uses at once;
/// one that sent nothing for [`RECENT`] to twice that is not counted.
#[derive(Debug)]
pub struct Connections {
    start: Instant,
    used: Mutex<Used>,
}

/// Connections that sent a request in the current period of [`RECENT`] and in the one before.
#[derive(Debug, Default)]
struct Used {
    period: u64,
    now: usize,
    before: usize,
}

impl Used {
    fn roll(&mut self, period: u64) {
        if period != self.period {
            self.before = if period == self.period + 1 {
                self.now
            } else {
                0
            };
            self.now = 0;
            self.period = period;
        }
    }
}

impl Connections {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            used: Mutex::default(),
        })
    }

    /// A connection just opened.
    pub fn connection(self: &Arc<Self>) -> Connection {
        Connection {
            all: self.clone(),
            last: AtomicU64::new(u64::MAX),
        }
    }

    /// How many connections sent a request lately: the most in this period or the last, so
    /// a connection in use in both counts once.
    pub fn recent(&self) -> usize {
        let mut used = self.lock();
        used.roll(self.period());
        used.now.max(used.before)
    }

    fn period(&self) -> u64 {
        (self.start.elapsed().as_millis() / RECENT.as_millis()) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One of the server's connections ([`Connections::connection`]).
#[derive(Debug)]
pub struct Connection {
    all: Arc<Connections>,
    /// The period of its last request.
    last: AtomicU64,
}

impl Connection {
    /// A request arrived on this connection (counted once per period).
    pub fn request(&self) {
        let period = self.all.period();
        if self.last.swap(period, Ordering::Relaxed) != period {
            let mut used = self.all.lock();
            used.roll(period);
            used.now += 1;
        }
    }
}

/// The intake's group commit (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    window: Duration,
    state: Arc<Mutex<State>>,
    /// The server's connections, when it counts them: once each that sent a request lately
    /// has one queued, the window's wait ends.
    connections: Option<Arc<Connections>>,
    /// Told when the group became [`ready`](Group::ready): the window's wait ends.
    ready: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Queued>,
    activities: usize,
    /// Whether a commit task runs (it takes every queued request in turn).
    committing: bool,
}

#[derive(Debug)]
struct Queued {
    activities: Vec<Activity>,
    unknown: Unknown,
    arrived: Instant,
    answer: oneshot::Sender<Result<Vec<ActivityOutcome>>>,
}

impl Group {
    /// Groups the requests that arrive within `window` of each other's first, or until each
    /// of the server's `connections` that sent a request lately has one queued.
    pub(crate) fn new(window: Duration, connections: Option<Arc<Connections>>) -> Self {
        Self {
            window,
            state: Arc::default(),
            connections,
            ready: Arc::new(Notify::new()),
        }
    }

    /// Whether the queued group is complete before its window closes: [`MAX_ACTIVITIES`]
    /// are queued, or nobody could send another request before it is answered.
    fn ready(&self, state: &State) -> bool {
        state.activities >= MAX_ACTIVITIES
            || (self.connections.as_ref()).is_some_and(|c| state.queued.len() >= c.recent())
    }

    /// Records `activities` in the next group commit of `store`; their outcomes in order.
    pub(crate) async fn record(
        &self,
        store: &Storage,
        activities: Vec<Activity>,
        unknown: Unknown,
    ) -> Result<Vec<ActivityOutcome>> {
        let (answer, answered) = oneshot::channel();
        let n = activities.len();
        let (start, ready) = {
            let mut state = self.lock();
            state.queued.push_back(Queued {
                activities,
                unknown,
                arrived: Instant::now(),
                answer,
            });
            state.activities += n;
            let start = !std::mem::replace(&mut state.committing, true);
            (start, self.ready(&state))
        };
        if ready {
            self.ready.notify_one();
        }
        if start {
            tokio::spawn(self.clone().commit_all(store.clone()));
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Other(anyhow::anyhow!(
                "the commit of this request's group stopped unexpectedly (see the log); nothing of it was recorded"
            )))
        })
    }

    /// Commits group after group until none is queued.
    async fn commit_all(self, store: Storage) {
        loop {
            let Some(deadline) = self.deadline() else {
                return;
            };
            // Until the window closes, or sooner when the group is ready (a notice left
            // from an earlier group is checked again).
            while !self.ready(&self.lock()) {
                let woken = tokio::time::timeout_at(deadline, self.ready.notified()).await;
                if woken.is_err() {
                    break;
                }
            }
            let group = self.take();
            let committed = std::panic::AssertUnwindSafe(commit(&store, group))
                .catch_unwind()
                .await;
            if let Err(panic) = committed {
                tracing::error!(
                    panic = crate::tasks::panic_message(&*panic),
                    "a group commit of activities panicked; its requests were answered with an error, nothing of them was recorded"
                );
            }
        }
    }

    /// When the window of the first queued request closes; `None` (and no commit running
    /// any more) when none is queued.
    fn deadline(&self) -> Option<Instant> {
        let mut state = self.lock();
        match state.queued.front() {
            Some(first) => Some(first.arrived + self.window),
            None => {
                state.committing = false;
                None
            }
        }
    }

    /// The next group: the first queued request, and those after it of the same policy while
    /// they fit in [`MAX_ACTIVITIES`].
    fn take(&self) -> Vec<Queued> {
        let mut state = self.lock();
        let mut group = Vec::new();
        let mut n = 0;
        while let Some(next) = state.queued.front() {
            let fits = n + next.activities.len() <= MAX_ACTIVITIES;
            if !group.is_empty() && (!fits || next.unknown != group_policy(&group)) {
                break;
            }
            let next = state.queued.pop_front().expect("looked at");
            n += next.activities.len();
            group.push(next);
        }
        state.activities -= n;
        group
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn group_policy(group: &[Queued]) -> Unknown {
    group[0].unknown
}

/// Records a group in one transaction and answers each request (see the module's text for
/// failures).
async fn commit(store: &Storage, group: Vec<Queued>) {
    let unknown = group_policy(&group);
    let sizes: Vec<usize> = group.iter().map(|q| q.activities.len()).collect();
    // Kept only where a failure would need each request again: a group of several whose
    // policy refuses an unknown personal broadcast (the one failure about a request's input).
    let again: Option<Vec<Vec<Activity>>> = (group.len() > 1 && unknown == Unknown::Refuse)
        .then(|| group.iter().map(|q| q.activities.clone()).collect());
    let (all, answers): (Vec<Vec<Activity>>, Vec<_>) =
        group.into_iter().map(|q| (q.activities, q.answer)).unzip();
    let all: Vec<Activity> = all.into_iter().flatten().collect();
    match (store.record_now(all, unknown).await, again) {
        (Ok(mut outcomes), _) => {
            for (answer, n) in answers.into_iter().zip(sizes).rev() {
                let own = outcomes.split_off(outcomes.len() - n);
                let _ = answer.send(Ok(own));
            }
        }
        (Err(StoreError::UnknownBroadcast { .. }), Some(again)) => {
            for (answer, activities) in answers.into_iter().zip(again) {
                let _ = answer.send(store.record_now(activities, unknown).await);
            }
        }
        (Err(e), _) => {
            let mut answers = answers.into_iter();
            let last = answers.next_back();
            for answer in answers {
                let _ = answer.send(Err(copy(&e)));
            }
            if let Some(answer) = last {
                let _ = answer.send(Err(e));
            }
        }
    }
}

/// The same failure, for another request of the group.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Conflict(why) => StoreError::Conflict(why.clone()),
        StoreError::NotFound(what) => StoreError::NotFound(what.clone()),
        StoreError::UnknownBroadcast {
            index,
            broadcast_id,
            customer_id,
        } => StoreError::UnknownBroadcast {
            index: *index,
            broadcast_id: *broadcast_id,
            customer_id: *customer_id,
        },
        StoreError::Other(e) => StoreError::Other(anyhow::anyhow!("{e:#}")),
    }
}
