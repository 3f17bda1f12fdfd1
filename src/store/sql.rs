//! SQL fragments both backends share.

/// The SQL condition that keeps a replay to events that are done.
pub(crate) const DONE: &str = "status IN ('dead', 'filtered', 'delivered')";

/// An outbox row's event, as an expression over `outbox`: its row in `outbox_payloads`, or,
/// for a `broadcasts` event, the event of its personal broadcast (stored once, there).
pub(crate) const PAYLOAD: &str = "COALESCE((SELECT payload FROM outbox_payloads p WHERE p.id = outbox.id), (SELECT event FROM personal_broadcasts b WHERE b.uuid = outbox.uuid))";

/// The creation time of the oldest event not yet done (through `outbox_open_age`).
pub(crate) const OLDEST_OPEN: &str =
    "SELECT min(created_at) FROM outbox WHERE status IN ('pending', 'inflight')";

/// The columns of a claimed send, over `sends s JOIN personal_broadcasts p JOIN broadcasts b`
/// (both backends), in the order of [`ClaimedSend`]'s fields.
pub(crate) const CLAIMED_COLUMNS: &str =
    "s.id, s.uuid, s.broadcast_id, s.customer_id, p.email, b.mapping, p.event, s.attempts";
