-- name: try_relay_lock
-- One relay at a time across replicas keeps per-event order simple; the others stand by.
SELECT pg_try_advisory_lock(%(key)s) AS locked;

-- name: unpublished
-- By id, which per event is commit order: writers take the event row lock before they insert.
SELECT id, event_id::text AS event_id, payload FROM outbox
WHERE published_at IS NULL
ORDER BY id
LIMIT %(limit)s;

-- name: mark_published
UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY(%(ids)s);

-- name: event_states
-- For reconciliation: each event's current state, a page at a time; events that started before
-- started_after (when given) are left out, their subjects having been purged by retention.
SELECT * FROM events
WHERE id > %(after)s
  AND (%(started_after)s::timestamptz IS NULL OR starts_at >= %(started_after)s)
ORDER BY id LIMIT %(limit)s;

-- name: has_unpublished
SELECT EXISTS (
    SELECT 1 FROM outbox WHERE event_id = %(event_id)s AND published_at IS NULL
) AS waiting;
