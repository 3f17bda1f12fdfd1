//! The outbox's vocabulary, below everything that uses it: what the worker claims and
//! records, the statuses operators see and ask for (`--since` included), the mail worker's
//! sends, and the store's typed error. No SQL here: each backend has its own.

pub mod error;
pub mod sends;
pub mod since;

pub use error::{Result, StoreError};
pub use sends::{ClaimedSend, SendOutcome, SendQueue, SendReplay, SendRow, SendStatus};
pub use since::parse_since;

use crate::event::Metric;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an event is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its next attempt.
    Pending,
    /// Leased to a worker, which is posting it.
    Inflight,
    Delivered,
    /// Retries exhausted or refused for good: kept until replayed or purged.
    Dead,
    /// Not sent: its metric is not in `[pega] activities`.
    Filtered,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Inflight,
        Status::Delivered,
        Status::Dead,
        Status::Filtered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Inflight => "inflight",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
            Status::Filtered => "filtered",
        }
    }

    /// The status of a stored value (the backends store the names).
    pub fn parse_stored(text: &str) -> Result<Self, UnknownStatus> {
        text.parse()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a status.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not one of pending, inflight, delivered, dead, filtered")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The statuses of events that are done, the only ones a replay selects: an event pending or
/// in flight is on its way already (replaying it would send it twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Done {
    Dead,
    Filtered,
    Delivered,
}

impl Done {
    pub fn status(self) -> Status {
        match self {
            Done::Dead => Status::Dead,
            Done::Filtered => Status::Filtered,
            Done::Delivered => Status::Delivered,
        }
    }
}

/// A status that a replay may not select.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` cannot be replayed: only dead, filtered or delivered events can (one pending or in flight is on its way already)")]
pub struct NotReplayable(pub String);

impl FromStr for Done {
    type Err = NotReplayable;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dead" => Ok(Done::Dead),
            "filtered" => Ok(Done::Filtered),
            "delivered" => Ok(Done::Delivered),
            other => Err(NotReplayable(other.to_owned())),
        }
    }
}

/// Now in Unix milliseconds, for the outbox's schedule and leases: the system clock, or,
/// when ahead of it, the system time first read advanced by tokio's monotonic clock. So a
/// step back of the system clock does not make leases and retries wait longer, and tests can
/// make retries due by advancing tokio's paused clock instead of sleeping.
///
/// The starting point is kept per thread: a runtime's clock (paused and advanced in tests)
/// measures only from a start read on one of its own threads (a start read in another test's
/// runtime, its clock advanced by an hour, made this one's advances invisible).
pub fn now_ms() -> i64 {
    thread_local! {
        static START: std::cell::Cell<Option<(i64, tokio::time::Instant)>> =
            const { std::cell::Cell::new(None) };
    }
    let system = system_ms();
    let (at_ms, at) = START.with(|start| match start.get() {
        Some(s) => s,
        None => {
            let s = (system, tokio::time::Instant::now());
            start.set(Some(s));
            s
        }
    });
    let monotonic = at_ms
        + tokio::time::Instant::now()
            .saturating_duration_since(at)
            .as_millis() as i64;
    system.max(monotonic)
}

fn system_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where an outbox row goes: each configured sink has its own row of every event (its own
/// status, attempts and dead letters), so a Kafka topic and Pega's REST service are tracked
/// apart when both are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Pega's REST service (`[pega] endpoint`).
    Pega,
    /// A Kafka topic (`[kafka]`).
    Kafka,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Pega, Lane::Kafka];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Pega => "pega",
            Lane::Kafka => "kafka",
        }
    }

    /// Whether the lane's events go out strictly in their order of creation: a Kafka
    /// partition keeps what it is given in order, so a retry must not let a later event
    /// overtake an earlier one (claims stop at the first event not yet due).
    pub fn ordered(self) -> bool {
        self == Lane::Kafka
    }

    /// The lane of a stored value.
    pub fn parse_stored(text: &str) -> Result<Self> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == text)
            .ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!(
                    "an outbox row has the unknown sink `{text}`"
                ))
            })
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a sink: pega or kafka"))
    }
}

/// The lanes new events are queued to, in order: the first row of an event is its own (its
/// id is an activity's `metric_id`, it carries the caller's `id`); the others copy it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes(u8);

impl Lanes {
    /// One lane.
    pub fn only(lane: Lane) -> Self {
        Lanes(1 << lane as u8)
    }

    /// These lanes (none: Pega's, where events wait until a sink is configured).
    pub fn of(lanes: impl IntoIterator<Item = Lane>) -> Self {
        let bits = lanes.into_iter().fold(0, |b, l| b | (1 << l as u8));
        if bits == 0 {
            Self::only(Lane::Pega)
        } else {
            Lanes(bits)
        }
    }

    pub fn contains(self, lane: Lane) -> bool {
        self.0 & (1 << lane as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Lane> {
        Lane::ALL.into_iter().filter(move |l| self.contains(*l))
    }

    /// As stored by a backend (an atomic).
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Self {
        if bits == 0 {
            Self::only(Lane::Pega)
        } else {
            Lanes(bits)
        }
    }
}

impl Default for Lanes {
    fn default() -> Self {
        Self::only(Lane::Pega)
    }
}

/// A personal broadcast found by the console's search.
#[derive(Debug, Clone)]
pub struct PersonalFound {
    pub broadcast_id: i64,
    pub customer_id: i64,
    pub uuid: String,
    pub email: String,
    pub mapping: String,
    /// Unix seconds.
    pub triggered_at: i64,
    /// The personal broadcast's event (its manual options among its fields).
    pub event: String,
}

/// The most personal broadcasts a search shows.
pub const FOUND_AT_MOST: usize = 20;

/// The SQL both backends search personal broadcasts with: `{q}` is the text searched, `{n}`
/// the number (customer id) it may be, `{interaction}` the backend's expression of the
/// `InteractionId` manual option (its index's), `{limit}` the most rows, `{keys}` the table
/// with the outbox's uuids and personal broadcasts, indexed (`outbox`, or PostgreSQL's
/// `outbox_keys`). Each branch goes through an index.
pub(crate) fn find_personal_sql(
    q: &str,
    n: &str,
    interaction: &str,
    limit: &str,
    keys: &str,
) -> String {
    format!(
        "SELECT p.broadcast_id, p.customer_id, p.uuid, p.email, b.mapping, b.created_at, p.event
           FROM (SELECT broadcast_id, customer_id FROM personal_broadcasts WHERE uuid = {q}
                UNION SELECT broadcast_id, customer_id FROM personal_broadcasts WHERE email = {q}
                UNION SELECT broadcast_id, customer_id FROM personal_broadcasts WHERE customer_id = {n}
                UNION SELECT x.broadcast_id, x.customer_id FROM personal_broadcasts x
                      JOIN customers c ON c.id = x.customer_id
                      WHERE c.external_id = {q} AND c.external_id <> ''
                UNION SELECT broadcast_id, customer_id FROM personal_broadcasts WHERE {interaction} = {q}
                UNION SELECT broadcast_id, customer_id FROM {keys} WHERE uuid = {q} AND broadcast_id IS NOT NULL) k
           JOIN personal_broadcasts p ON p.broadcast_id = k.broadcast_id AND p.customer_id = k.customer_id
           JOIN broadcasts b ON b.id = p.broadcast_id
          ORDER BY b.created_at DESC, p.broadcast_id DESC LIMIT {limit}"
    )
}

/// An event claimed for delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub uuid: String,
    pub metric: Metric,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_ms: i64,
    /// When the lease on it runs out (Unix milliseconds): after that, any worker may claim it.
    pub lease_until_ms: i64,
}

/// The metric of a stored outbox row (written by [`Metric::as_str`]).
pub fn stored_metric(text: &str) -> Result<Metric> {
    Metric::parse(text).ok_or_else(|| {
        StoreError::Other(anyhow::anyhow!(
            "an outbox row has the unknown metric `{text}`"
        ))
    })
}

impl Claimed {
    /// A row just queued, leased to this process: what the hand-off passes to the worker.
    pub fn new_leased(
        id: i64,
        uuid: &str,
        metric: Metric,
        payload: String,
        row: (i64, i64),
    ) -> Self {
        let (created_ms, lease_until_ms) = row;
        Self {
            id,
            uuid: uuid.to_owned(),
            metric,
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

impl Completion {
    /// The row's new status, next attempt (Unix ms) and delivery time (Unix seconds).
    pub(crate) fn row(&self) -> (Status, Option<i64>, Option<i64>) {
        match *self {
            Completion::Delivered => (Status::Delivered, None, Some(now_ms() / 1000)),
            Completion::Retry { next_at_ms } => (Status::Pending, Some(next_at_ms), None),
            Completion::Dead => (Status::Dead, None, None),
            Completion::Filtered => (Status::Filtered, None, None),
        }
    }
}

/// What happened to some events (a batch posted together, or events filtered out).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ids: Vec<i64>,
    /// The attempt made, if any (filtered events have none).
    pub attempt: Option<Attempt>,
    pub completion: Completion,
}

impl Outcome {
    /// The attempt that delivered its events, if this is one: the stores keep it in the
    /// events' own rows (every other attempt is a row of `attempts`).
    pub fn delivering(&self) -> Option<&Attempt> {
        self.attempt.as_ref().filter(|a| {
            a.outcome == AttemptOutcome::Delivered && self.completion == Completion::Delivered
        })
    }
}

/// One attempt, as recorded (never a secret; the first KB of the answer).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at_ms: i64,
    pub http_status: Option<u16>,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    pub detail: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; tried again later.
    Retry,
    /// Failed for good: a dead letter.
    Dead,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        }
    }

    /// The outcome of a stored attempt (an unknown text, from a newer version, reads as a
    /// retry: neither delivered nor final).
    pub fn parse_stored(text: &str) -> Self {
        match text {
            "delivered" => AttemptOutcome::Delivered,
            "dead" => AttemptOutcome::Dead,
            _ => AttemptOutcome::Retry,
        }
    }
}

/// An outbox row, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub uuid: String,
    /// Which sink the row is for (an event has one row per configured sink).
    pub sink: Lane,
    pub metric: String,
    pub status: Status,
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
    /// Every row of the event (one per sink) that is done.
    Uuid(String),
    /// The event's row for one sink, if it is a dead letter (the console's button: the other
    /// sink's row, delivered, is not sent again).
    DeadRow {
        uuid: String,
        lane: Lane,
    },
    Status(Done),
    /// Every event with this status created at or after this Unix time.
    Since {
        since: i64,
        status: Done,
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

impl OutboxStats {
    /// Sets the count of `status`.
    pub fn set(&mut self, status: Status, n: i64) {
        let slot = match status {
            Status::Pending => &mut self.pending,
            Status::Inflight => &mut self.inflight,
            Status::Delivered => &mut self.delivered,
            Status::Dead => &mut self.dead,
            Status::Filtered => &mut self.filtered,
        };
        *slot = n;
    }
}
