-- An interaction's journey for the console: an event's personal broadcast on its outbox row
-- (events of one personal broadcast through an index, not their payloads), and personal
-- broadcasts found by email, customer, and Pega's InteractionID (the manual option).
ALTER TABLE outbox ADD COLUMN broadcast_id INTEGER;
ALTER TABLE outbox ADD COLUMN customer_id INTEGER;
UPDATE outbox SET (broadcast_id, customer_id) =
    (SELECT p.broadcast_id, p.customer_id FROM personal_broadcasts p WHERE p.uuid = outbox.uuid)
 WHERE metric = 'broadcasts';
UPDATE outbox SET (broadcast_id, customer_id) =
    (SELECT json_extract(p.payload, '$.broadcast_id'), json_extract(p.payload, '$.customer_id')
       FROM outbox_payloads p WHERE p.id = outbox.id)
 WHERE metric <> 'broadcasts';
CREATE INDEX outbox_personal ON outbox (broadcast_id, customer_id);
CREATE INDEX personal_broadcasts_email ON personal_broadcasts (email);
CREATE INDEX personal_broadcasts_customer ON personal_broadcasts (customer_id);
CREATE INDEX personal_broadcasts_interaction
    ON personal_broadcasts (CAST(json_extract(event, '$.broadcast_manual_options.InteractionId') AS TEXT));
