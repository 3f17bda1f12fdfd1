-- Mailability, as the seed describes it: hard bounces > 0, soft bounces > 4, an unsubscribe
-- or a complaint make a customer not mailable; an open or click resets the soft count.
ALTER TABLE customers ADD COLUMN bounce_count_hard INTEGER NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN bounce_count_soft INTEGER NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN complaints INTEGER NOT NULL DEFAULT 0;
ALTER TABLE customers ADD COLUMN unsubscribed INTEGER NOT NULL DEFAULT 0;

-- Every activity received; its id is the event's metric_id, `external_id` the caller's
-- optional `id` (a resend of the same activity is a no-op).
CREATE TABLE activities (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id  TEXT    UNIQUE,
    uuid         TEXT    NOT NULL UNIQUE,
    metric       TEXT    NOT NULL,
    broadcast_id INTEGER NOT NULL,
    customer_id  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

-- Delivery state of the outbox: status pending | inflight | delivered | dead | filtered.
-- From here on next_attempt_at and lease_until are Unix milliseconds.
ALTER TABLE outbox ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN delivered_at INTEGER;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
ALTER TABLE outbox ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;

-- Every delivery attempt: never a secret, the first KB of the answer.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id   INTEGER NOT NULL REFERENCES outbox (id),
    at_ms       INTEGER NOT NULL,
    http_status INTEGER,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);
CREATE INDEX attempts_outbox ON attempts (outbox_id);

-- Operator switches (delivery paused).
CREATE TABLE flags (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
