-- The same model as the PostgreSQL schema: customers unique by external id, or by email
-- among the customers without one (a recipient without a CustomerID no longer matches a
-- customer who has one); no copy of the manual options beside the event that carries them;
-- counts of the outbox by status kept with every change, for /metrics; the oldest
-- undelivered event found through an index.
DROP INDEX customers_email;
DROP INDEX customers_external_id;
CREATE UNIQUE INDEX customers_by_external_id ON customers (external_id) WHERE external_id <> '';
CREATE UNIQUE INDEX customers_by_email ON customers (email) WHERE external_id = '';

ALTER TABLE personal_broadcasts DROP COLUMN manual_options;

CREATE INDEX outbox_open_age ON outbox (created_at) WHERE status IN ('pending', 'inflight');

CREATE TABLE outbox_counts (
    status TEXT    PRIMARY KEY,
    n      INTEGER NOT NULL
);
INSERT INTO outbox_counts (status, n)
SELECT s.status, (SELECT count(*) FROM outbox o WHERE o.status = s.status)
  FROM (SELECT 'pending' AS status UNION ALL SELECT 'inflight' UNION ALL SELECT 'delivered'
        UNION ALL SELECT 'dead' UNION ALL SELECT 'filtered') s;

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
