-- Statements for batches that span several events (group commit across events): one statement
-- per step for the whole batch, arrays in. Arrays go in binary (%(name)b): psycopg's text format
-- quotes and escapes every element in Python (20 ids: 25 us, 20 timestamps: 80 us; binary: 5).

-- name: lock_events
-- Every event of the batch, locked in id order: two batches sharing events never deadlock.
-- clock_timestamp(): the database's clock is the one clock every replica agrees on.
SELECT *, clock_timestamp() AS db_now FROM events WHERE id = ANY(%(ids)b::uuid[])
ORDER BY id FOR UPDATE;

-- name: lock_lapsed_holds_of_events
-- As holds.sql lock_lapsed_holds_of_event, for every event of the batch at once (SKIP LOCKED:
-- CreateHold holds the event rows here, against the lock order, so it never waits on a hold).
SELECT * FROM reservations
WHERE event_id = ANY(%(event_ids)b::uuid[]) AND status = 'PENDING' AND lapses_at <= %(now)s
ORDER BY lapses_at
FOR UPDATE SKIP LOCKED;

-- name: insert_holds
-- New holds of a batch, for any of its events, in one statement; they share the batch's clock.
INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,
                          idempotency_key, request_fingerprint, created_at, updated_at, expires_at)
SELECT id, event_id, quantity, ticket_type, 'PENDING', customer_ref, idempotency_key,
       request_fingerprint, %(now)s, %(now)s, expires_at
FROM unnest(%(ids)b::uuid[], %(event_ids)b::uuid[], %(quantities)b::int[],
            %(ticket_types)b::text[], %(customer_refs)b::text[], %(idempotency_keys)b::text[],
            %(request_fingerprints)b::text[], %(expires_at)b::timestamptz[])
     AS new (id, event_id, quantity, ticket_type, customer_ref, idempotency_key,
             request_fingerprint, expires_at);

-- name: update_events_counters
UPDATE events AS e
SET paid = u.paid, pending = u.pending, version = u.version, updated_at = %(now)s
FROM unnest(%(ids)b::uuid[], %(paid)b::int[], %(pending)b::int[], %(versions)b::bigint[])
     AS u (id, paid, pending, version)
WHERE e.id = u.id;

-- name: lock_reservations
-- Confirms and releases of a batch: their holds first, in id order (the lock order: reservation
-- rows before event rows), then their events with lock_events.
SELECT *, clock_timestamp() AS db_now FROM reservations WHERE id = ANY(%(ids)b::uuid[])
ORDER BY id FOR UPDATE;

-- name: update_reservations
-- What changed on the reservations a write touched (confirms, releases, lapsed holds, a refund):
-- one statement for any number of them. Ids are unique within one call.
UPDATE reservations AS r
SET status = u.status, updated_at = u.updated_at, payment_reference = u.payment_reference,
    provider_order_id = u.provider_order_id, virtual_account_number = u.virtual_account_number,
    qr_code = u.qr_code, qr_code_url = u.qr_code_url, refund_reason = u.refund_reason,
    expires_at = u.expires_at, payment_grace_until = u.payment_grace_until,
    extensions = u.extensions, paid_late = u.paid_late, refunded_quantity = u.refunded_quantity
FROM unnest(%(id)b::uuid[], %(status)b::text[], %(updated_at)b::timestamptz[],
            %(payment_reference)b::text[], %(provider_order_id)b::text[],
            %(virtual_account_number)b::text[], %(qr_code)b::text[], %(qr_code_url)b::text[],
            %(refund_reason)b::text[], %(expires_at)b::timestamptz[],
            %(payment_grace_until)b::timestamptz[], %(extensions)b::int[],
            %(paid_late)b::boolean[], %(refunded_quantity)b::int[])
     AS u (id, status, updated_at, payment_reference, provider_order_id, virtual_account_number,
           qr_code, qr_code_url, refund_reason, expires_at, payment_grace_until, extensions,
           paid_late, refunded_quantity)
WHERE r.id = u.id;
