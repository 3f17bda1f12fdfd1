-- Customers, found again by external id or email so customer_id is stable.
CREATE TABLE customers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    email       TEXT    NOT NULL,
    external_id TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);
CREATE INDEX customers_email ON customers (email);
CREATE INDEX customers_external_id ON customers (external_id) WHERE external_id <> '';

-- One row per accepted trigger; `response` is the answer given, replayed for idempotent repeats.
CREATE TABLE broadcasts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    mapping         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    idempotency_key TEXT    UNIQUE,
    response        TEXT    NOT NULL DEFAULT ''
);

-- One row per recipient of a trigger.
CREATE TABLE personal_broadcasts (
    broadcast_id    INTEGER NOT NULL REFERENCES broadcasts (id),
    customer_id     INTEGER NOT NULL REFERENCES customers (id),
    uuid            TEXT    NOT NULL UNIQUE,
    email           TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    manual_options  TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    PRIMARY KEY (broadcast_id, customer_id)
);

-- Events waiting for delivery to Pega, committed with the change that made them.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT    NOT NULL UNIQUE,
    metric          TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
