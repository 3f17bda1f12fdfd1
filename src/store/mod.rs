//! Durable storage: customers, broadcasts, personal broadcasts and the outbox of events.
//! Embedded SQLite (WAL) for now; everything that must not be lost is committed before the
//! HTTP answer.

pub mod outbox;
pub mod sqlite;

pub use outbox::{Attempt, Claimed, Completion, Delivery, OutboxStats, Outcome, Replay};
pub use sqlite::Store;

use crate::event::Common;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// One recipient in the answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientAnswer {
    pub customer_id: i64,
    pub uuid: String,
    pub email_address: String,
    /// `queued`; `duplicate` for a recipient already sent by an earlier trigger; `suppressed`
    /// for a customer who is not mailable (no mail, no event).
    pub status: String,
}

/// The answer to an accepted trigger (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerAnswer {
    pub broadcast_id: i64,
    pub recipients: Vec<RecipientAnswer>,
}

/// The answer for one activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
