-- Sending the mail ([mail]): one row per personal broadcast to send, committed with the
-- trigger, claimed by the mail worker with a lease like the outbox's events.
CREATE TABLE sends (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT    NOT NULL UNIQUE,
    broadcast_id    INTEGER NOT NULL,
    customer_id     INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    last_error      TEXT
);
CREATE INDEX sends_pending ON sends (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX sends_leased ON sends (lease_until) WHERE status = 'inflight';
