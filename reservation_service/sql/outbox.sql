-- name: try_relay_lock
-- One relay at a time across replicas keeps per-event order simple; the others stand by.
SELECT pg_try_advisory_lock(%(key)s) AS locked;

-- name: wait_relay_lock
-- A standby relay waits here, asleep in the server, until the active relay's session ends.
SELECT pg_advisory_lock(%(key)s);

-- name: unpublished
-- By id, which per event is commit order: writers take the event row lock before they insert.
-- Dead letters (migration 0003) are left out: they will never be published.
SELECT id, event_id::text AS event_id, payload, trace_context FROM outbox
WHERE published_at IS NULL AND dead_lettered_at IS NULL
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
    SELECT 1 FROM outbox
    WHERE event_id = %(event_id)s AND published_at IS NULL AND dead_lettered_at IS NULL
) AS waiting;

-- name: jump_version
-- The feed holds a version of this event the database never wrote (a forged message, or a
-- database restored from an older backup): move the event's version past it, so the snapshot
-- published next wins everywhere by the one version rule ("keep it if newer"), and every later
-- change counts on from there. Under the event's row lock, like every other change to it.
UPDATE events SET version = GREATEST(version, %(past)s) + 1
WHERE id = %(id)s
RETURNING *;

-- name: event_state
-- The current state of the event of a dead-lettered row, published as a snapshot in its place.
SELECT * FROM events WHERE id = %(id)s;

-- name: dead_letter
UPDATE outbox SET dead_lettered_at = clock_timestamp(), dead_letter_reason = %(reason)s
WHERE id = %(id)s AND published_at IS NULL;

-- name: dead_letters
-- What an operator looks at: every row the relay set aside, and why.
SELECT id, event_id::text AS event_id, dead_letter_reason FROM outbox
WHERE dead_lettered_at IS NOT NULL
ORDER BY id;
