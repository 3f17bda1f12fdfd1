-- The PostgreSQL schema: the same tables as SQLite's, with identifiers from sequences (unique
-- across instances) and unique indexes that make customers and idempotency keys hold across
-- instances. Event JSON is kept as TEXT, byte for byte (jsonb would reorder keys).

CREATE TABLE customers (
    id                BIGSERIAL PRIMARY KEY,
    email             TEXT    NOT NULL,
    external_id       TEXT    NOT NULL DEFAULT '',
    created_at        BIGINT  NOT NULL,
    bounce_count_hard BIGINT  NOT NULL DEFAULT 0,
    bounce_count_soft BIGINT  NOT NULL DEFAULT 0,
    complaints        BIGINT  NOT NULL DEFAULT 0,
    unsubscribed      BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX customers_by_external_id ON customers (external_id) WHERE external_id <> '';
CREATE UNIQUE INDEX customers_by_email ON customers (email) WHERE external_id = '';

CREATE TABLE broadcasts (
    id              BIGSERIAL PRIMARY KEY,
    mapping         TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    idempotency_key TEXT   UNIQUE,
    response        TEXT   NOT NULL DEFAULT ''
);

CREATE TABLE personal_broadcasts (
    broadcast_id    BIGINT NOT NULL REFERENCES broadcasts (id),
    customer_id     BIGINT NOT NULL REFERENCES customers (id),
    uuid            TEXT   NOT NULL UNIQUE,
    email           TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    manual_options  TEXT   NOT NULL,
    event           TEXT   NOT NULL,
    idempotency_key TEXT   UNIQUE,
    PRIMARY KEY (broadcast_id, customer_id)
);

CREATE TABLE activities (
    id           BIGSERIAL PRIMARY KEY,
    external_id  TEXT   UNIQUE,
    uuid         TEXT   NOT NULL UNIQUE,
    metric       TEXT   NOT NULL,
    broadcast_id BIGINT NOT NULL,
    customer_id  BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- next_attempt_at and lease_until are Unix milliseconds.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    uuid            TEXT    NOT NULL UNIQUE,
    metric          TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_until     BIGINT  NOT NULL DEFAULT 0,
    created_at      BIGINT  NOT NULL,
    created_ms      BIGINT  NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

CREATE TABLE attempts (
    id          BIGSERIAL PRIMARY KEY,
    outbox_id   BIGINT  NOT NULL REFERENCES outbox (id),
    at_ms       BIGINT  NOT NULL,
    http_status INTEGER,
    duration_ms BIGINT  NOT NULL,
    outcome     TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);
CREATE INDEX attempts_outbox ON attempts (outbox_id);

CREATE TABLE flags (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
