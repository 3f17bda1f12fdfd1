-- The attempt that delivered an event is kept in its own outbox row; `attempts` keeps the
-- attempts that did not deliver (and, after a replay, the delivery before it), as on SQLite
-- (its migration 0013): a row of its own for every delivered event, with its index entry and
-- its reference checked, was a large part of recording the event's outcome.
ALTER TABLE outbox ADD COLUMN delivery_at_ms BIGINT;
ALTER TABLE outbox ADD COLUMN delivery_status INTEGER;
ALTER TABLE outbox ADD COLUMN delivery_ms BIGINT;
ALTER TABLE outbox ADD COLUMN delivery_detail TEXT;
