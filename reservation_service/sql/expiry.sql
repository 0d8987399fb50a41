-- name: count_due_holds
-- One clock reading for the whole pass, bound once (the MATERIALIZED CTE runs clock_timestamp()
-- a single time): a volatile clock_timestamp() in the WHERE is evaluated row by row and cannot
-- bound an index scan, so it read every PENDING hold instead of the due ones.
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT (SELECT count(*) FROM reservations
        WHERE status = 'PENDING' AND lapses_at <= (SELECT now FROM clock)) AS due,
       (SELECT now FROM clock) AS db_now;

-- name: claim_due_holds
-- SKIP LOCKED lets several expirers (one per replica) share the work: each due hold is claimed by
-- exactly one of them, and a hold being confirmed right now is left to that confirmation.
-- lapses_at (migration 0006): the deadline, or the end of a payment grace.
SELECT * FROM reservations
WHERE status = 'PENDING' AND lapses_at <= %(now)s
ORDER BY lapses_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: lock_events
SELECT * FROM events WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE;

-- name: seconds_until_next_expiry
SELECT EXTRACT(EPOCH FROM (min(lapses_at) - clock_timestamp()))::float8 AS seconds
FROM reservations WHERE status = 'PENDING';
