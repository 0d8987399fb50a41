-- Statements for batches that span several events (group commit across events): one statement
-- per step for the whole batch, arrays in.

-- name: lock_events
-- Every event of the batch, locked in id order: two batches sharing events never deadlock.
-- clock_timestamp(): the database's clock is the one clock every replica agrees on.
SELECT *, clock_timestamp() AS db_now FROM events WHERE id = ANY(%(ids)s::uuid[])
ORDER BY id FOR UPDATE;

-- name: lock_lapsed_holds_of_events
-- As holds.sql lock_lapsed_holds_of_event, for every event of the batch at once (SKIP LOCKED:
-- CreateHold holds the event rows here, against the lock order, so it never waits on a hold).
SELECT * FROM reservations
WHERE event_id = ANY(%(event_ids)s::uuid[]) AND status = 'PENDING' AND lapses_at <= %(now)s
ORDER BY lapses_at
FOR UPDATE SKIP LOCKED;

-- name: insert_holds
-- New holds of a batch, for any of its events, in one statement; they share the batch's clock.
INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,
                          idempotency_key, request_fingerprint, created_at, updated_at, expires_at)
SELECT id, event_id, quantity, ticket_type, 'PENDING', customer_ref, idempotency_key,
       request_fingerprint, %(now)s, %(now)s, expires_at
FROM unnest(%(ids)s::uuid[], %(event_ids)s::uuid[], %(quantities)s::int[],
            %(ticket_types)s::text[], %(customer_refs)s::text[], %(idempotency_keys)s::text[],
            %(request_fingerprints)s::text[], %(expires_at)s::timestamptz[])
     AS new (id, event_id, quantity, ticket_type, customer_ref, idempotency_key,
             request_fingerprint, expires_at);

-- name: update_events_counters
UPDATE events AS e
SET paid = u.paid, pending = u.pending, version = u.version, updated_at = %(now)s
FROM unnest(%(ids)s::uuid[], %(paid)s::int[], %(pending)s::int[], %(versions)s::bigint[])
     AS u (id, paid, pending, version)
WHERE e.id = u.id;

-- name: lock_reservations
-- Confirms and releases of a batch: their holds first, in id order (the lock order: reservation
-- rows before event rows), then their events with lock_events.
SELECT *, clock_timestamp() AS db_now FROM reservations WHERE id = ANY(%(ids)s::uuid[])
ORDER BY id FOR UPDATE;
