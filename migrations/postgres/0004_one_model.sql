-- The same model as the SQLite schema: an event's payload in its own table, an activity's
-- caller id on its outbox row (the activities table goes: an activity's metric_id is its
-- outbox row's id, as on SQLite); no copy of the manual options beside the event that
-- carries them; counts of the outbox by status kept with every change, for /metrics (in
-- shards by connection, so instances do not queue on one row); the oldest undelivered
-- event found through an index.
ALTER TABLE personal_broadcasts DROP COLUMN manual_options;

CREATE TABLE outbox_payloads (
    id      BIGINT PRIMARY KEY,
    payload TEXT   NOT NULL
);
INSERT INTO outbox_payloads (id, payload) SELECT id, payload FROM outbox;
ALTER TABLE outbox DROP COLUMN payload;

ALTER TABLE outbox ADD COLUMN external_id TEXT;
UPDATE outbox o SET external_id = a.external_id
  FROM activities a WHERE a.uuid = o.uuid AND a.external_id IS NOT NULL;
CREATE UNIQUE INDEX outbox_external_id ON outbox (external_id) WHERE external_id IS NOT NULL;
-- New metric_ids come from the outbox's sequence: past every id the activities gave out.
SELECT setval(pg_get_serial_sequence('outbox', 'id'),
              GREATEST((SELECT max(id) FROM outbox), (SELECT max(id) FROM activities), 1));
DROP TABLE activities;

CREATE INDEX outbox_open_age ON outbox (created_at) WHERE status IN ('pending', 'inflight');

CREATE TABLE outbox_counts (
    status TEXT    NOT NULL,
    shard  INTEGER NOT NULL,
    n      BIGINT  NOT NULL,
    PRIMARY KEY (status, shard)
);
INSERT INTO outbox_counts (status, shard, n) SELECT status, 0, count(*) FROM outbox GROUP BY status;

CREATE FUNCTION pegabridge_count_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s INTEGER := pg_backend_pid() % 16;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO outbox_counts (status, shard, n) VALUES (OLD.status, s, -1)
        ON CONFLICT (status, shard) DO UPDATE SET n = outbox_counts.n - 1;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO outbox_counts (status, shard, n) VALUES (NEW.status, s, 1)
        ON CONFLICT (status, shard) DO UPDATE SET n = outbox_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_counts_insert AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION pegabridge_count_outbox();
CREATE TRIGGER outbox_counts_update AFTER UPDATE OF status ON outbox
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION pegabridge_count_outbox();
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION pegabridge_count_outbox();
