-- name: lock_event
-- clock_timestamp(): the database's clock is the one clock every replica agrees on.
SELECT *, clock_timestamp() AS db_now FROM events WHERE id = %(id)s FOR UPDATE;

-- name: customer_seats
-- Per-customer limits: the seats each customer of a batch holds or has paid for on the event, read
-- once per batch after the event row is locked (so no concurrent batch can add to them), and only
-- for events with a limit. customer_ref <> '' matches the index (migration 0007).
SELECT customer_ref, sum(quantity - refunded_quantity)::int AS seats FROM reservations
WHERE event_id = %(event_id)s AND customer_ref = ANY(%(customer_refs)s) AND customer_ref <> ''
  AND status IN ('PENDING', 'PAID')
GROUP BY customer_ref;

-- name: next_lapse_of_event
-- When seats in checkout may come free: read only when a hold is refused for want of seats.
SELECT min(lapses_at) AS next_lapse_at FROM reservations
WHERE event_id = %(event_id)s AND status = 'PENDING';

-- name: find_by_idempotency_keys
SELECT * FROM reservations WHERE idempotency_key = ANY(%(keys)s);

-- name: update_event_counters
UPDATE events
SET paid = %(paid)s, pending = %(pending)s, version = %(version)s, updated_at = %(now)s
WHERE id = %(id)s;

-- name: update_event
UPDATE events
SET experience_title = %(experience_title)s, local_date = %(local_date)s,
    local_start_time = %(local_start_time)s, time_zone = %(time_zone)s, starts_at = %(starts_at)s,
    capacity = %(capacity)s, status = %(status)s,
    experience_only_enabled = %(experience_only_enabled)s, currency = %(currency)s,
    dinner_price = %(dinner_price)s, experience_only_price = %(experience_only_price)s,
    paid = %(paid)s, pending = %(pending)s, version = %(version)s, updated_at = %(now)s,
    hold_ttl_s = %(hold_ttl_s)s, max_seats_per_hold = %(max_seats_per_hold)s,
    max_seats_per_customer = %(max_seats_per_customer)s,
    max_hold_lifetime_s = %(max_hold_lifetime_s)s
WHERE id = %(id)s;

-- name: lock_reservation
SELECT *, clock_timestamp() AS db_now FROM reservations WHERE id = %(id)s FOR UPDATE;

-- name: get_reservation
SELECT * FROM reservations WHERE id = %(id)s;

-- name: list_reservations
SELECT * FROM reservations
WHERE (%(event_id)s::uuid IS NULL OR event_id = %(event_id)s::uuid)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (created_at, id) > (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: insert_outbox
-- WITH ORDINALITY keeps the rows' id order the order of the changes. trace_context: the
-- transaction's traceparent (NULL with tracing off), sent on by the relay. The same statement
-- writes each change's history row (migration 0006) and, with notify, the hint for relays in
-- other replicas (pg_notify, delivered at commit; this replica wakes its own relay in-process):
-- no extra statement per transaction.
WITH published AS (
    INSERT INTO outbox (event_id, payload, trace_context)
    SELECT event_id, payload, %(trace_context)s::text
    FROM unnest(%(event_ids)b::uuid[], %(payloads)b::bytea[])
         WITH ORDINALITY AS c (event_id, payload, n)
    ORDER BY n
), recorded AS (
    INSERT INTO history (event_id, reservation_id, occurred_at, actor, change_type,
                         reservation_status, seats, event_version, reason, detail)
    SELECT event_id, reservation_id, occurred_at, actor, change_type, reservation_status,
           seats, event_version, reason, detail
    FROM unnest(%(h_event_ids)b::uuid[], %(h_reservation_ids)b::uuid[],
                %(h_occurred_at)b::timestamptz[], %(h_actors)b::text[], %(h_types)b::text[],
                %(h_statuses)b::text[], %(h_seats)b::int[], %(h_versions)b::bigint[],
                %(h_reasons)b::text[], %(h_details)b::text[]) WITH ORDINALITY
         AS h (event_id, reservation_id, occurred_at, actor, change_type, reservation_status,
               seats, event_version, reason, detail, n)
    ORDER BY n
)
SELECT pg_notify('slotlock_outbox', '') WHERE %(notify)s::boolean;

-- name: list_history
-- ListChanges: one event's or one reservation's history, oldest first, a page after after_id.
SELECT * FROM history
WHERE (%(event_id)s::uuid IS NULL OR event_id = %(event_id)s::uuid)
  AND (%(reservation_id)s::uuid IS NULL OR reservation_id = %(reservation_id)s::uuid)
  AND id > %(after_id)s
ORDER BY id
LIMIT %(limit)s;
