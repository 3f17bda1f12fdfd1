//! The mail worker's queue: one row per personal broadcast to send (`[mail]`), committed with
//! its trigger and claimed with a lease, as the outbox's events are.

/// A send claimed by the mail worker, with what it needs to build the message.
#[derive(Debug, Clone)]
pub struct ClaimedSend {
    pub id: i64,
    /// The personal broadcast's uuid (its `Message-ID` and its `broadcasts` event's uuid).
    pub uuid: String,
    pub broadcast_id: i64,
    pub customer_id: i64,
    pub email: String,
    /// The mapping that made it.
    pub mapping: String,
    /// The personal broadcast's event (carries the manual options).
    pub event: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The relay accepted it at `at` (Unix seconds): its `broadcasts` event is queued with
    /// that time.
    Accepted { at: i64 },
    /// A 4xx answer or no answer: again at `next_at_ms`.
    Retry { next_at_ms: i64, error: String },
    /// A 5xx refusal of the recipient: a hard bounce.
    Bounced { code: String, reason: String },
    /// Retries exhausted on the recipient's temporary refusals: a soft bounce.
    GaveUp { code: String, reason: String },
    /// Retries exhausted on the sender's or the relay's problem (connection, TLS, AUTH, the
    /// sender refused, the content refused): no bounce, the customer untouched; the send is
    /// dead with the relay's answer, to be replayed once fixed.
    Dead { reason: String },
}

/// Where a send stands (the `sends.status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// Claimed by a mail worker, under a lease.
    InFlight,
    /// Accepted by the relay.
    Sent,
    /// Refused for good: a hard bounce.
    Bounced,
    /// Retries exhausted: a soft bounce.
    Failed,
    /// Not sent, for a reason of the sender or the relay (no bounce).
    Dead,
}

impl SendStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            SendStatus::Pending => "pending",
            SendStatus::InFlight => "inflight",
            SendStatus::Sent => "sent",
            SendStatus::Bounced => "bounced",
            SendStatus::Failed => "failed",
            SendStatus::Dead => "dead",
        }
    }
}
