-- One row per event and sink: with a Kafka topic beside Pega's REST service an event has a
-- row for each, tracked apart (status, attempts, dead letters). The uuid is unique per sink.
ALTER TABLE outbox ADD COLUMN sink TEXT NOT NULL DEFAULT 'pega';
ALTER TABLE outbox DROP CONSTRAINT outbox_uuid_key;
CREATE UNIQUE INDEX outbox_uuid ON outbox (uuid, sink);
DROP INDEX outbox_pending;
DROP INDEX outbox_leased;
CREATE INDEX outbox_pending ON outbox (sink, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_leased ON outbox (sink, lease_until) WHERE status = 'inflight';
-- An ordered sink's claims walk its open events by id.
CREATE INDEX outbox_open ON outbox (sink, id) WHERE status IN ('pending', 'inflight');
