-- name: insert_event
INSERT INTO events (id, code, experience_title, local_date, local_start_time, time_zone, starts_at,
                    capacity, status, experience_only_enabled, currency, dinner_price,
                    experience_only_price, version, created_at, updated_at, hold_ttl_s,
                    max_seats_per_hold, max_seats_per_customer, max_hold_lifetime_s)
VALUES (%(id)s, %(code)s, %(experience_title)s, %(local_date)s, %(local_start_time)s,
        %(time_zone)s, %(starts_at)s, %(capacity)s, %(status)s, %(experience_only_enabled)s,
        %(currency)s, %(dinner_price)s, %(experience_only_price)s, %(version)s, %(now)s, %(now)s,
        %(hold_ttl_s)s, %(max_seats_per_hold)s, %(max_seats_per_customer)s,
        %(max_hold_lifetime_s)s)
ON CONFLICT (code) DO NOTHING
RETURNING id;

-- name: lock_pending_holds_of_event_by_code
-- Cancelling an event releases its pending holds. Reservations before their event row: the lock
-- order every writer follows (confirm, release, refund, expiry), so none of them can deadlock
-- with a cancellation. ORDER BY id: two cancellations take the same rows in the same order.
SELECT * FROM reservations
WHERE event_id = (SELECT id FROM events WHERE code = %(code)s) AND status = 'PENDING'
ORDER BY id
FOR UPDATE;

-- name: lock_event_by_code
SELECT * FROM events WHERE code = %(code)s FOR UPDATE;

-- name: get_event
-- With when its first PENDING hold lapses (GetEvent: "seats in checkout free up at ...").
SELECT e.*, (SELECT min(r.lapses_at) FROM reservations r
             WHERE r.event_id = e.id AND r.status = 'PENDING') AS next_hold_lapses_at
FROM events e WHERE e.id = %(id)s;

-- name: list_events
SELECT * FROM events
WHERE (%(from_date)s::date IS NULL OR local_date >= %(from_date)s::date)
  AND (%(to_date)s::date IS NULL OR local_date <= %(to_date)s::date)
  -- reported_status: what a listing shows (migration 0002), so the filter agrees with it.
  AND (%(status)s::text IS NULL OR reported_status = %(status)s::text)
  AND (%(after_starts_at)s::timestamptz IS NULL
       OR (starts_at, id) > (%(after_starts_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY starts_at, id
LIMIT %(limit)s;
