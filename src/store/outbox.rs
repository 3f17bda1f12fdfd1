//! The outbox's shapes, shared by the backends: what the worker claims and records, and what
//! operators see.

use serde::Serialize;

/// Now in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An event claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub uuid: String,
    pub metric: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_ms: i64,
    /// When the lease on it runs out (Unix milliseconds): after that, any worker may claim it.
    pub lease_until_ms: i64,
}

impl Claimed {
    /// A row just queued, leased to this process: what the hand-off passes to the worker.
    pub fn new_leased(id: i64, uuid: &str, metric: &str, payload: String, row: (i64, i64)) -> Self {
        let (created_ms, lease_until_ms) = row;
        Self {
            id,
            uuid: uuid.to_owned(),
            metric: metric.to_owned(),
            payload,
            attempts: 0,
            created_ms,
            lease_until_ms,
        }
    }
}

/// How an attempt ended, for the event's row.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Delivered,
    /// Try again at `next_at_ms` (Unix milliseconds).
    Retry {
        next_at_ms: i64,
    },
    /// Give up: visible, replayable.
    Dead,
    /// Not sent: the metric is not in `[pega] activities`.
    Filtered,
}

/// What happened to some events (a batch posted together, or events filtered out).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ids: Vec<i64>,
    /// The attempt made, if any (filtered events have none).
    pub attempt: Option<Attempt>,
    pub completion: Completion,
}

/// One attempt, as recorded (never a secret; the first KB of the answer).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at_ms: i64,
    pub http_status: Option<u16>,
    pub duration_ms: i64,
    pub outcome: String,
    pub detail: String,
}

/// An outbox row, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub uuid: String,
    pub metric: String,
    pub status: String,
    pub attempts: u32,
    /// Unix milliseconds.
    pub next_attempt_at: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub last_error: Option<String>,
}

/// Which events to replay. Only events that are done (dead, filtered or delivered) are ever
/// replayed: one pending or in flight is on its way already, so a replay leaves it as it is
/// (replaying twice sends once more, not twice).
#[derive(Debug, Clone)]
pub enum Replay {
    Uuid(String),
    Status(String),
    /// Every event with this status created at or after this Unix time.
    Since {
        since: i64,
        status: String,
    },
}

/// Which finished events [`crate::store::Store::purge`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Delivered events (retention).
    Delivered,
    /// Dead letters (an operator's decision).
    Dead,
}

impl Purge {
    /// The condition selecting them.
    pub(crate) fn condition(self) -> &'static str {
        match self {
            Purge::Delivered => "status = 'delivered'",
            Purge::Dead => "status = 'dead'",
        }
    }
}

/// The statuses a replay may select.
pub const REPLAYABLE: [&str; 3] = ["dead", "filtered", "delivered"];

/// The SQL condition that keeps a replay to events that are done.
pub(crate) const DONE: &str = "status IN ('dead', 'filtered', 'delivered')";

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutboxStats {
    pub pending: i64,
    pub inflight: i64,
    pub delivered: i64,
    pub dead: i64,
    pub filtered: i64,
    pub oldest_pending_age_secs: i64,
}
