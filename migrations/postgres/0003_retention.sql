-- Retention: delivered events are removed after `[store] retention_days`, dead letters by an
-- operator (`deliveries purge`). Both are found by age through these indexes.
CREATE INDEX outbox_delivered_age ON outbox (created_at) WHERE status = 'delivered';
CREATE INDEX outbox_dead_age ON outbox (created_at) WHERE status = 'dead';
