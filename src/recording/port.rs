//! The port of [`crate::recording`]: the reads and writes of one transaction, which each
//! backend of [`crate::store`] implements with SQL and nothing else. What to read and write,
//! and what it means, is decided once in [`crate::recording`].

use super::{ActivityAnswer, RecipientAnswer, RecipientStatus};
use crate::event::{Common, Metric};
use crate::outbox::{Claimed, Result, SendStatus};

/// A customer as stored: its id and what decides whether it may be mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub id: i64,
    pub bounce_count_hard: i64,
    pub bounce_count_soft: i64,
    pub complaints: i64,
    pub unsubscribed: bool,
}

/// How a customer is found: by its external id (`CustomerID`) when the trigger has one, else
/// by email among the customers without one. Each is a unique index on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerKey<'a> {
    ExternalId(&'a str),
    Email(&'a str),
}

/// A personal broadcast's row.
#[derive(Debug)]
pub struct PersonalRow<'a> {
    pub broadcast_id: i64,
    pub customer_id: i64,
    pub uuid: &'a str,
    pub email: &'a str,
    pub status: RecipientStatus,
    /// Its `broadcasts` event: what every later activity's event is built from.
    pub event: &'a str,
    pub idempotency_key: Option<&'a str>,
}

/// An event to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub uuid: &'a str,
    pub metric: Metric,
    /// The caller's id of the activity that made it (a resend is then a no-op).
    pub external_id: Option<&'a str>,
    /// Its payload is the event of its personal broadcast (a `broadcasts` event), stored
    /// there once, not again in `outbox_payloads`.
    pub in_personal_broadcast: bool,
    /// Recorded `filtered`: never sent (see `Activity::withheld`).
    pub withheld: bool,
    /// Its personal broadcast (broadcast id, customer id): an interaction's journey.
    pub personal: (i64, i64),
}

/// How an activity changes its customer's counts (the seed's mailability rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountChange {
    HardBounce,
    SoftBounce,
    Complaint,
    Unsubscribe,
    /// An open or a click shows the address works: the soft count starts again.
    ResetSoftBounces,
    None,
}

impl CountChange {
    /// The `SET` clause of the `UPDATE customers`, and the condition under which the change
    /// would leave the row as it is (to skip the write). `truth` is the backend's literal.
    pub fn sql(self, truth: &str) -> Option<(String, String)> {
        let (set, unchanged) = match self {
            CountChange::HardBounce => {
                ("bounce_count_hard = bounce_count_hard + 1".into(), "FALSE")
            }
            CountChange::SoftBounce => {
                ("bounce_count_soft = bounce_count_soft + 1".into(), "FALSE")
            }
            CountChange::Complaint => ("complaints = complaints + 1".into(), "FALSE"),
            CountChange::Unsubscribe => {
                let set = format!("unsubscribed = {truth}");
                return Some((set.clone(), set));
            }
            CountChange::ResetSoftBounces => {
                ("bounce_count_soft = 0".into(), "bounce_count_soft = 0")
            }
            CountChange::None => return None,
        };
        Some((set, unchanged.into()))
    }
}

/// One transaction's operations. Each backend implements it over its connection; SQLite's
/// never wait (its futures are ready at once), PostgreSQL's are its round trips.
#[allow(async_fn_in_trait)] // used only here, by the two backends
pub trait Tx {
    /// The stored answer of the trigger with this idempotency key.
    async fn trigger_answer(&mut self, key: &str) -> Result<Option<String>>;
    /// Keeps a trigger's answer for its idempotency key.
    async fn set_trigger_answer(&mut self, broadcast_id: i64, answer: &str) -> Result<()>;
    /// The earlier send of the recipient with each idempotency key, in order (`None` for a
    /// recipient without a key, or without an earlier send): (broadcast id, its answer).
    async fn earlier_sends(
        &mut self,
        keys: &[Option<&str>],
    ) -> Result<Vec<Option<(i64, RecipientAnswer)>>>;
    async fn insert_broadcast(&mut self, mapping: &str, at: i64, key: Option<&str>) -> Result<i64>;
    /// The customer with each key, in order, created (with its `email`) if new. A key may
    /// repeat: each of its places gets the same customer.
    async fn customers(
        &mut self,
        wanted: &[(CustomerKey<'_>, &str)],
        at: i64,
    ) -> Result<Vec<Standing>>;
    async fn insert_personal(&mut self, row: PersonalRow<'_>) -> Result<()>;
    /// The `broadcasts` event of a personal broadcast, if there is one.
    async fn broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
    ) -> Result<Option<Common>>;
    /// The answer given to the activity with this caller's id, if it was recorded.
    async fn earlier_activity(&mut self, external_id: &str) -> Result<Option<ActivityAnswer>>;
    async fn change_counts(&mut self, customer_id: i64, change: CountChange) -> Result<()>;
    /// Marks a person's open of a personal broadcast; whether it is the first.
    async fn first_human_open(&mut self, broadcast_id: i64, customer_id: i64) -> Result<bool>;
    async fn standing(&mut self, customer_id: i64) -> Result<Standing>;
    /// Queues the send of a personal broadcast (`[mail]`).
    async fn enqueue_send(&mut self, uuid: &str, broadcast_id: i64, customer_id: i64)
        -> Result<()>;
    /// Replaces a personal broadcast's event (its times, once its mail was accepted).
    async fn update_broadcast_event(
        &mut self,
        broadcast_id: i64,
        customer_id: i64,
        event: &str,
    ) -> Result<()>;
    /// Moves a send on: its status, next attempt (Unix ms) and last error; counts an attempt.
    async fn mark_send(
        &mut self,
        id: i64,
        status: SendStatus,
        next_at_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()>;
    /// Reads ahead, before a batch of activities, what they will ask for: their personal
    /// broadcasts' events (for [`Tx::broadcast_event`]), and room for an event each (for
    /// [`Tx::enqueue`]), where one statement for all costs less than one each (PostgreSQL's
    /// round trips). Nothing by default.
    async fn read_ahead(&mut self, activities: &[crate::activity::Activity]) -> Result<()> {
        let _ = activities;
        Ok(())
    }
    /// Takes ids ahead for up to `n` events about to be queued ([`Tx::enqueue`]), where one
    /// statement for all costs less than one each (PostgreSQL's round trips). Nothing by
    /// default.
    async fn ids_ahead(&mut self, n: usize) -> Result<()> {
        let _ = n;
        Ok(())
    }
    /// Queues an event in the outbox: `payload` is given the row's id (the event's
    /// `metric_id`). Returns that id, and the event when it is leased to this process.
    async fn enqueue(
        &mut self,
        new: NewEvent<'_>,
        payload: impl FnOnce(i64) -> Result<String> + Send,
    ) -> Result<(i64, Option<Claimed>)>;
}
