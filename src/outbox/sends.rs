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

impl std::str::FromStr for SendStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => SendStatus::Pending,
            "inflight" => SendStatus::InFlight,
            "sent" => SendStatus::Sent,
            "bounced" => SendStatus::Bounced,
            "failed" => SendStatus::Failed,
            "dead" => SendStatus::Dead,
            other => {
                return Err(format!(
                "`{other}` is not a send status (pending, inflight, sent, bounced, failed, dead)"
            ))
            }
        })
    }
}

impl serde::Serialize for SendStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A send as `sends list|show` and `/admin/sends` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SendRow {
    pub id: i64,
    /// The personal broadcast's uuid (its `Message-ID` is `<uuid@message_id_domain>`).
    pub uuid: String,
    pub email: String,
    pub mapping: String,
    pub status: SendStatus,
    pub attempts: i64,
    /// When its next attempt is due (Unix milliseconds), while pending.
    pub next_attempt_at_ms: i64,
    /// When its trigger committed it (Unix seconds).
    pub created_at: i64,
    /// The last failure: the stage and the relay's answer.
    pub last_error: Option<String>,
    /// Its personal broadcast.
    pub broadcast_id: i64,
    pub customer_id: i64,
}

/// Which sends to send again: only dead ones (the sender's or the relay's problem, fixed
/// since). A bounced or failed send's customer got a bounce: it is not sent again.
#[derive(Debug, Clone)]
pub enum SendReplay {
    Uuid(String),
    /// Every dead send, or those created since (Unix seconds).
    Dead {
        since: Option<i64>,
    },
}

/// How many sends wait and how many are in flight (`/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SendQueue {
    pub pending: i64,
    pub inflight: i64,
}
