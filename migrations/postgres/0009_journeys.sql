-- An interaction's journey for the console: an event's personal broadcast on its outbox row
-- (events of one personal broadcast through an index, not their payloads), and personal
-- broadcasts found by email, customer, and Pega's InteractionID (the manual option).
ALTER TABLE outbox ADD COLUMN broadcast_id BIGINT;
ALTER TABLE outbox ADD COLUMN customer_id BIGINT;
UPDATE outbox o SET broadcast_id = p.broadcast_id, customer_id = p.customer_id
  FROM personal_broadcasts p WHERE p.uuid = o.uuid AND o.metric = 'broadcasts';
UPDATE outbox o SET broadcast_id = (p.payload::jsonb ->> 'broadcast_id')::bigint,
                    customer_id = (p.payload::jsonb ->> 'customer_id')::bigint
  FROM outbox_payloads p WHERE p.id = o.id AND o.metric <> 'broadcasts';
CREATE INDEX outbox_personal ON outbox (broadcast_id, customer_id);
CREATE INDEX personal_broadcasts_email ON personal_broadcasts (email);
CREATE INDEX personal_broadcasts_customer ON personal_broadcasts (customer_id);
CREATE INDEX personal_broadcasts_interaction
    ON personal_broadcasts ((event::jsonb -> 'broadcast_manual_options' ->> 'InteractionId'));
