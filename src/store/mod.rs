//! Durable storage: customers, broadcasts, personal broadcasts and the outbox of events.
//! Embedded SQLite (WAL) for now; everything that must not be lost is committed before the
//! HTTP answer.

pub mod sqlite;

pub use sqlite::Store;

use serde::{Deserialize, Serialize};

/// One recipient in the answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientAnswer {
    pub customer_id: i64,
    pub uuid: String,
    pub email_address: String,
    /// `queued`, or `duplicate` for a recipient already sent by an earlier trigger.
    pub status: String,
}

/// The answer to an accepted trigger (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerAnswer {
    pub broadcast_id: i64,
    pub recipients: Vec<RecipientAnswer>,
}
