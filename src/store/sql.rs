//! SQL fragments both backends share.

/// The SQL condition that keeps a replay to events that are done.
pub(crate) const DONE: &str = "status IN ('dead', 'filtered', 'delivered')";

/// An outbox row's event, as an expression over `outbox`: its row in `outbox_payloads`, or,
/// for a `broadcasts` event, the event of its personal broadcast (stored once, there).
/// (A macro too, for statements that are `concat!`ed constants.)
macro_rules! payload {
    () => {
        "COALESCE((SELECT payload FROM outbox_payloads p WHERE p.id = outbox.id), (SELECT event FROM personal_broadcasts b WHERE b.uuid = outbox.uuid))"
    };
}
pub(crate) use payload;
pub(crate) const PAYLOAD: &str = payload!();

/// The columns of a claimed send, over `sends s JOIN personal_broadcasts p JOIN broadcasts b`
/// (both backends), in the order of [`ClaimedSend`]'s fields.
pub(crate) const CLAIMED_COLUMNS: &str =
    "s.id, s.uuid, s.broadcast_id, s.customer_id, p.email, b.mapping, p.event, s.attempts";

/// A send as listed, over `sends s JOIN personal_broadcasts p JOIN broadcasts b` (both
/// backends), in the order of [`crate::outbox::SendRow`]'s fields.
pub(crate) const SEND_ROW: &str = "SELECT s.id, s.uuid, p.email, b.mapping, s.status, s.attempts, s.next_attempt_at, s.created_at, s.last_error, s.broadcast_id, s.customer_id FROM sends s JOIN personal_broadcasts p ON p.uuid = s.uuid JOIN broadcasts b ON b.id = s.broadcast_id";

/// What a replay of sends sets: pending, due now, a fresh schedule.
pub(crate) const SEND_REPLAY: &str =
    "UPDATE sends SET status = 'pending', attempts = 0, lease_until = 0, next_attempt_at";
