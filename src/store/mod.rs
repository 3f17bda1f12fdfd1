//! Durable storage: customers, broadcasts, personal broadcasts and the outbox of events.
//! [`Store`] is the one interface; each backend has its own SQL and migrations: embedded
//! SQLite (the default) and PostgreSQL (several instances on one database). Everything that
//! must not be lost is committed before the HTTP answer.

pub mod handoff;
pub mod outbox;
pub mod postgres;
pub mod sqlite;

pub use handoff::{Handoff, Queue};
pub use outbox::{
    Attempt, Claimed, Completion, Delivery, OutboxStats, Outcome, Purge, Replay, REPLAYABLE,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::activity::Activity;
use crate::event::Common;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use tokio::sync::Notify;

/// A personal broadcast to record.
#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub email: String,
    pub external_id: String,
    pub manual_options: Map<String, Value>,
    /// The mapping's per-recipient idempotency key, if any (already namespaced).
    pub idempotency_key: Option<String>,
    /// Its `broadcasts` event, complete but for what the store assigns: `broadcast_id`,
    /// `customer_id`, `uuid` and the timestamps.
    pub event: Common,
}

/// The store cannot take the work now (a full disk, an I/O error, a database that does not
/// answer): the HTTP layer answers 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// One recipient in the answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientAnswer {
    pub customer_id: i64,
    pub uuid: String,
    pub email_address: String,
    /// `queued`; `duplicate` for a recipient already sent by an earlier trigger; `suppressed`
    /// for a customer who is not mailable (no mail, no event).
    pub status: String,
}

/// The answer to an accepted trigger (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerAnswer {
    pub broadcast_id: i64,
    pub recipients: Vec<RecipientAnswer>,
}

/// The answer for one activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityAnswer {
    pub uuid: String,
    pub metric_id: i64,
    /// `queued`, or `duplicate` for a resend of an activity with a known `id`.
    pub status: String,
}

/// An activity whose personal broadcast does not exist.
#[derive(Debug, thiserror::Error)]
#[error("activity {index}: no personal broadcast {broadcast_id} for customer {customer_id}")]
pub struct UnknownBroadcast {
    pub index: usize,
    pub broadcast_id: i64,
    pub customer_id: i64,
}

/// The common part of the event of activity `index`'s personal broadcast, from the stored
/// event (`None`: no such personal broadcast).
pub(crate) fn common_of_stored(
    stored: Option<String>,
    index: usize,
    a: &Activity,
) -> anyhow::Result<Common> {
    let Some(stored) = stored else {
        return Err(UnknownBroadcast {
            index,
            broadcast_id: a.broadcast_id,
            customer_id: a.customer_id,
        }
        .into());
    };
    Ok(serde_json::from_str(&stored)?)
}

/// How an activity changes its customer's counts (the seed's mailability rules): the `SET`
/// clause of an `UPDATE customers`, and the condition under which that change would leave the
/// row as it is (an open's reset of a soft count that is already 0, a second unsubscribe), to
/// skip the write on. `truth` is the backend's literal for true.
pub(crate) fn count_change(a: &Activity, truth: &str) -> (String, String) {
    use crate::activity::Detail;
    use crate::event::Metric;
    let (set, unchanged) = match (&a.metric, &a.detail) {
        (Metric::Bounces, Detail::Bounce { hard: true, .. }) => {
            ("bounce_count_hard = bounce_count_hard + 1".into(), "FALSE")
        }
        (Metric::Bounces, _) => ("bounce_count_soft = bounce_count_soft + 1".into(), "FALSE"),
        (Metric::Complaints, _) => ("complaints = complaints + 1".into(), "FALSE"),
        (Metric::Unsubscribes, _) => {
            let set = format!("unsubscribed = {truth}");
            return (set.clone(), set);
        }
        // An open or a click shows the address works: the soft count starts again.
        (Metric::Opens | Metric::Clicks | Metric::ShortLinks, _) => {
            ("bounce_count_soft = 0".into(), "bounce_count_soft = 0")
        }
        _ => ("id = id".into(), "TRUE"),
    };
    (set, unchanged.into())
}

/// The first answer again when every recipient of a trigger was sent before (per-recipient
/// idempotency keys): `earlier` holds each recipient's earlier send, if any.
pub(crate) fn earlier_answer(earlier: &[Option<(i64, RecipientAnswer)>]) -> Option<TriggerAnswer> {
    if earlier.is_empty() || earlier.iter().any(Option::is_none) {
        return None;
    }
    let found: Vec<&(i64, RecipientAnswer)> = earlier.iter().flatten().collect();
    Some(TriggerAnswer {
        broadcast_id: found[0].0,
        recipients: found.into_iter().map(|(_, r)| r.clone()).collect(),
    })
}

/// A recipient's answer when it is a duplicate: of an earlier send, or of a customer already
/// in this trigger (the same customer twice in one trigger gets one mail).
pub(crate) fn duplicate_of(
    before: Option<(i64, RecipientAnswer)>,
    answers: &[RecipientAnswer],
    customer_id: Option<i64>,
) -> Option<RecipientAnswer> {
    let original = before.map(|(_, a)| a).or_else(|| {
        customer_id.and_then(|id| answers.iter().find(|a| a.customer_id == id).cloned())
    })?;
    Some(RecipientAnswer {
        status: "duplicate".into(),
        ..original
    })
}

/// The store the configuration names: `sqlite://...` or `postgres://...`.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// Set when this process delivers: new events go to its worker in memory.
    handoff: Option<Handoff>,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $call,
            Backend::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the store at `url`: SQLite with its `synchronous` setting, or PostgreSQL with a
    /// pool of `pool_size` connections. Runs the migrations.
    pub async fn connect(url: &str, synchronous: &str, pool_size: u32) -> anyhow::Result<Self> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(PgStore::connect(url, pool_size).await?)
        } else {
            Backend::Sqlite(SqliteStore::connect(url, synchronous).await?)
        };
        Ok(Self {
            backend,
            handoff: None,
        })
    }

    /// This store, handing the events it commits to this process's worker through `handoff`.
    pub fn with_handoff(self, handoff: Handoff) -> Self {
        Self {
            handoff: Some(handoff),
            ..self
        }
    }

    /// The places reserved for a request's `n` new events, and where they go.
    fn reserve(&self, n: usize) -> (Option<handoff::Reservation>, Queue) {
        let reservation = self.handoff.as_ref().map(|h| h.reserve(n));
        let queue = reservation.as_ref().map_or(Queue::Due, |r| r.queue());
        (reservation, queue)
    }

    /// After the commit: the leased events to the worker, or a wake-up for due ones.
    fn hand_over(&self, reservation: Option<handoff::Reservation>, leased: Vec<Claimed>) {
        if let (Some(h), Some(r)) = (&self.handoff, reservation) {
            h.hand_over(r, leased);
        }
    }

    /// Opens the store `[store]` names.
    pub async fn open(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        let store = &settings.store;
        Self::connect(&settings.store_url(), &store.synchronous, store.pool_size).await
    }

    /// Wakes `notify` when any instance commits events (PostgreSQL `LISTEN`); with SQLite
    /// there is one process, whose handlers wake it themselves.
    pub async fn listen(&self, notify: Arc<Notify>) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(s) => s.listen(notify).await,
        }
    }

    /// Whether the database takes a write (`/ready`): a small committed write, which fails
    /// when the disk is full or the database is read-only; on SQLite also at least
    /// `min_free_bytes` free where the database file is (SQLite may still commit small writes
    /// into its journal's old space on a full disk, so a failed write alone comes too late).
    pub async fn writable(&self, min_free_bytes: u64) -> anyhow::Result<()> {
        each!(self, s => s.writable(min_free_bytes).await)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        each!(self, s => s.ping().await)
    }

    /// Records a trigger's broadcast, personal broadcasts and events (one transaction).
    pub async fn record_trigger(
        &self,
        mapping: String,
        idempotency_key: Option<String>,
        recipients: Vec<NewRecipient>,
    ) -> anyhow::Result<TriggerAnswer> {
        let (reservation, queue) = self.reserve(recipients.len());
        let (answer, leased) =
            each!(self, s => s.record_trigger(mapping, idempotency_key, recipients, queue).await)?;
        self.hand_over(reservation, leased);
        Ok(answer)
    }

    /// Records a request's activities and their events, all or nothing.
    pub async fn record_activities(
        &self,
        activities: Vec<Activity>,
    ) -> anyhow::Result<Vec<ActivityAnswer>> {
        let (reservation, queue) = self.reserve(activities.len());
        let (answers, leased) = each!(self, s => s.record_activities(activities, queue).await)?;
        self.hand_over(reservation, leased);
        Ok(answers)
    }

    /// Claims due events for delivery.
    pub async fn claim(&self, limit: usize, lease_secs: u64) -> anyhow::Result<Vec<Claimed>> {
        each!(self, s => s.claim(limit, lease_secs).await)
    }

    /// Records a delivery round's outcomes.
    pub async fn complete(&self, outcomes: Vec<Outcome>) -> anyhow::Result<()> {
        each!(self, s => s.complete(outcomes).await)
    }

    /// Events by status, newest first.
    pub async fn deliveries(
        &self,
        status: Option<String>,
        limit: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        each!(self, s => s.deliveries(status, limit).await)
    }

    /// One event with its attempts.
    pub async fn delivery(
        &self,
        uuid: String,
    ) -> anyhow::Result<Option<(Delivery, serde_json::Value, Vec<Attempt>)>> {
        each!(self, s => s.delivery(uuid).await)
    }

    /// Removes up to `limit` events with `status` (`delivered` or `dead`) created before
    /// `before` (Unix seconds), with their attempts; returns how many.
    pub async fn purge(&self, status: Purge, before: i64, limit: usize) -> anyhow::Result<usize> {
        each!(self, s => s.purge(status, before, limit).await)
    }

    /// Removes every event with `status` created before `before`, in transactions of `batch`
    /// (other writes run between them), until done or `stop` says so; returns how many.
    pub async fn purge_all(
        &self,
        status: Purge,
        before: i64,
        batch: usize,
        stop: impl Fn() -> bool,
    ) -> anyhow::Result<usize> {
        let mut removed = 0;
        loop {
            let n = self.purge(status, before, batch).await?;
            removed += n;
            if n < batch || stop() {
                return Ok(removed);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Makes events due again.
    pub async fn replay(&self, which: Replay) -> anyhow::Result<usize> {
        each!(self, s => s.replay(which).await)
    }

    /// Pauses or resumes delivery.
    pub async fn set_paused(&self, paused: bool) -> anyhow::Result<()> {
        each!(self, s => s.set_paused(paused).await)
    }

    /// Whether delivery is paused.
    pub async fn is_paused(&self) -> anyhow::Result<bool> {
        each!(self, s => s.is_paused().await)
    }

    /// Outbox counts for `/metrics`.
    pub async fn outbox_stats(&self) -> anyhow::Result<OutboxStats> {
        each!(self, s => s.outbox_stats().await)
    }

    /// The events waiting in the outbox.
    pub async fn pending_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        each!(self, s => s.pending_events().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(customer_id: i64, status: &str) -> RecipientAnswer {
        RecipientAnswer {
            customer_id,
            uuid: format!("u{customer_id}"),
            email_address: format!("c{customer_id}@x.nl"),
            status: status.into(),
        }
    }

    #[test]
    fn the_first_answer_comes_back_only_when_every_recipient_was_sent_before() {
        let all = [
            Some((7, answer(1, "queued"))),
            Some((7, answer(2, "queued"))),
        ];
        let again = earlier_answer(&all).unwrap();
        assert_eq!(again.broadcast_id, 7);
        assert_eq!(
            again.recipients,
            vec![answer(1, "queued"), answer(2, "queued")]
        );
        assert!(earlier_answer(&[Some((7, answer(1, "queued"))), None]).is_none());
        assert!(earlier_answer(&[]).is_none());
    }

    #[test]
    fn duplicates_repeat_the_original_answer_with_their_own_status() {
        let earlier = Some((3, answer(1, "queued")));
        assert_eq!(
            duplicate_of(earlier, &[], None),
            Some(answer(1, "duplicate"))
        );
        let so_far = [answer(4, "queued")];
        assert_eq!(
            duplicate_of(None, &so_far, Some(4)),
            Some(answer(4, "duplicate"))
        );
        assert_eq!(duplicate_of(None, &so_far, Some(5)), None);
    }
}
