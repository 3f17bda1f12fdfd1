-- A claim and an outcome write fewer index entries. Every update of an outbox row that
-- changes its status writes a new version of the row with an entry in each of the table's
-- indexes (the status is in the partial indexes' conditions, so no such update is
-- heap-only): a claim wrote six, an outcome four. Now a claim writes three (the row's id, and
-- the two indexes of open events) and an outcome two (the id, and the index of its new
-- status by age).
--
-- 1. One index of due events. `due_at` is when an open event is next due to be claimed: its
--    next attempt while pending, the end of its lease while in flight (a lease that ran out
--    makes it due again). One index of open events by lane and `due_at` serves both kinds of
--    claim in one statement, in order of due time, where `outbox_pending` and `outbox_leased`
--    took a statement each. The age of the oldest open event is read from each lane's first
--    open event by id through `outbox_open`, so `outbox_open_age` goes: an instance takes its
--    ids from the sequence in the transaction that inserts them, so the first by id was
--    created at most a transaction's length after the oldest. (Adding a stored column
--    rewrites the outbox once, under its lock: on an outbox of millions of rows the first
--    start after an upgrade takes that long, and other instances wait for it.)
ALTER TABLE outbox ADD COLUMN due_at BIGINT
    GENERATED ALWAYS AS (CASE WHEN status = 'inflight' THEN lease_until ELSE next_attempt_at END) STORED;
DROP INDEX outbox_pending;
DROP INDEX outbox_leased;
DROP INDEX outbox_open_age;
CREATE INDEX outbox_due ON outbox (sink, due_at, id) WHERE status IN ('pending', 'inflight');

-- 2. An event's keys, which never change, indexed in a table of their own. `outbox_keys` has a
--    copy of each row's uuid, lane, caller id and personal broadcast, written by a trigger
--    with every insert into the outbox, and the indexes that find an event by them (and keep
--    the uuid per lane and the caller id unique); a row's updates no longer write an entry
--    into any of them. The outbox keeps its own copy of these columns to read.
CREATE TABLE outbox_keys (
    id           BIGINT PRIMARY KEY,
    uuid         TEXT   NOT NULL,
    sink         TEXT   NOT NULL,
    external_id  TEXT,
    broadcast_id BIGINT,
    customer_id  BIGINT
);
INSERT INTO outbox_keys (id, uuid, sink, external_id, broadcast_id, customer_id)
    SELECT id, uuid, sink, external_id, broadcast_id, customer_id FROM outbox;
DROP INDEX outbox_uuid;
DROP INDEX outbox_external_id;
DROP INDEX outbox_personal;
CREATE UNIQUE INDEX outbox_keys_uuid ON outbox_keys (uuid, sink);
CREATE UNIQUE INDEX outbox_keys_external_id ON outbox_keys (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX outbox_keys_personal ON outbox_keys (broadcast_id, customer_id);

CREATE FUNCTION pegabridge_outbox_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_keys (id, uuid, sink, external_id, broadcast_id, customer_id)
        SELECT id, uuid, sink, external_id, broadcast_id, customer_id FROM new_rows;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_keys_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pegabridge_outbox_keys();
