-- One row per event and sink: with a Kafka topic beside Pega's REST service an event has a
-- row for each, tracked apart (status, attempts, dead letters). The uuid is unique per sink.
-- SQLite cannot drop a column's UNIQUE, so the table is rebuilt (foreign keys from attempts
-- are checked at commit, when the new table holds the same ids).
PRAGMA defer_foreign_keys = ON;

CREATE TABLE outbox_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT    NOT NULL,
    metric          TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    lease_until     INTEGER NOT NULL DEFAULT 0,
    delivered_at    INTEGER,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL DEFAULT 0,
    external_id     TEXT,
    sink            TEXT    NOT NULL DEFAULT 'pega'
);
INSERT INTO outbox_new (id, uuid, metric, status, attempts, next_attempt_at, created_at,
                        lease_until, delivered_at, last_error, created_ms, external_id)
SELECT id, uuid, metric, status, attempts, next_attempt_at, created_at,
       lease_until, delivered_at, last_error, created_ms, external_id FROM outbox;
-- Ids are never given out twice (an activity's metric_id is its row's id), also past purged rows.
UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'outbox')
 WHERE name = 'outbox_new';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

CREATE UNIQUE INDEX outbox_uuid ON outbox (uuid, sink);
CREATE UNIQUE INDEX outbox_external_id ON outbox (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX outbox_pending ON outbox (sink, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_leased ON outbox (sink, lease_until) WHERE status = 'inflight';
-- An ordered sink's claims walk its open events by id.
CREATE INDEX outbox_open ON outbox (sink, id) WHERE status IN ('pending', 'inflight');
CREATE INDEX outbox_delivered_age ON outbox (created_at) WHERE status = 'delivered';
CREATE INDEX outbox_dead_age ON outbox (created_at) WHERE status = 'dead';
CREATE INDEX outbox_open_age ON outbox (created_at) WHERE status IN ('pending', 'inflight');

CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER outbox_counts_update AFTER UPDATE OF status ON outbox
WHEN OLD.status <> NEW.status BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE outbox_counts SET n = n + 1 WHERE status = NEW.status;
END;
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
END;
