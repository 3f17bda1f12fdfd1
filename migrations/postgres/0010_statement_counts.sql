-- The outbox's counts by status, kept per statement instead of per row on updates and
-- deletes: a delivery round that settles a hundred events used to run two upserts of
-- `outbox_counts` per event (a PL/pgSQL call each); now it runs one per status the round
-- changed. (Inserts keep their row trigger: the intake inserts one row per statement.)
DROP TRIGGER outbox_counts_update ON outbox;
DROP TRIGGER outbox_counts_delete ON outbox;

CREATE FUNCTION pegabridge_count_outbox_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s INTEGER := pg_backend_pid() % 16;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO outbox_counts (status, shard, n)
        SELECT status, s, sum(d) FROM (
            SELECT o.status, -1 AS d FROM old_rows o JOIN new_rows w ON w.id = o.id
             WHERE o.status IS DISTINCT FROM w.status
            UNION ALL
            SELECT w.status, 1 FROM old_rows o JOIN new_rows w ON w.id = o.id
             WHERE o.status IS DISTINCT FROM w.status) changes
        GROUP BY status HAVING sum(d) <> 0
        ON CONFLICT (status, shard) DO UPDATE SET n = outbox_counts.n + excluded.n;
    ELSE
        INSERT INTO outbox_counts (status, shard, n)
        SELECT status, s, -count(*) FROM old_rows GROUP BY status
        ON CONFLICT (status, shard) DO UPDATE SET n = outbox_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_counts_update AFTER UPDATE ON outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pegabridge_count_outbox_changes();
CREATE TRIGGER outbox_counts_delete AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pegabridge_count_outbox_changes();
