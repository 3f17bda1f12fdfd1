-- Claims read only due rows: pending ones by due time, in-flight ones by lease end. (The
-- (status, next_attempt_at) index could not serve the OR of both, so claims scanned the table.)
DROP INDEX outbox_due;
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_leased ON outbox (lease_until) WHERE status = 'inflight';
