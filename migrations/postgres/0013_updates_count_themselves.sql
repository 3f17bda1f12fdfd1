-- The outbox's counts on updates are kept by the statements that change a status: each adds
-- its own changes to `outbox_counts` in the same statement (the store's `COUNT_CHANGES`).
-- The update trigger copied every updated row into two transition tables and joined them
-- twice, for every update of the outbox, a status changed or not: a third of PostgreSQL's
-- CPU per event at saturation. Inserts and deletes keep their statement triggers.
DROP TRIGGER outbox_counts_update ON outbox;
