-- The age of the oldest open event is read through `outbox_open` (sink, id): the open event
-- with the lowest id of each lane is its oldest, as one connection writes the outbox and
-- stamps `created_at` as it inserts (a replay keeps an event's id and its `created_at`). An
-- index of its own cost every event an entry written when it was queued and one removed when
-- it was done.
DROP INDEX outbox_open_age;
