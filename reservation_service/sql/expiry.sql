-- name: claim_due_holds
-- One statement per pass: claim the due holds, and report the pass's clock, how many were due
-- and the next lapse after the claimed ones (for the expirer's plan).
-- - The clock is read once (the MATERIALIZED CTE runs clock_timestamp() a single time) and bound
--   as an InitPlan parameter: a volatile clock_timestamp() in the WHERE is evaluated row by row
--   and cannot bound an index scan, so it read every PENDING hold instead of the due ones.
-- - SKIP LOCKED lets several expirers (one per worker and replica) share the work: each due hold
--   is claimed by exactly one of them, and a hold being confirmed right now is left to that
--   confirmation. Holds skipped that way still count in next_lapse_at (due: a pass again soon).
-- - lapses_at (migration 0006): the deadline, or the end of a payment grace.
-- - The LEFT JOIN returns one row (reservation columns NULL) when nothing is claimed.
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now),
claimed AS MATERIALIZED (
    SELECT * FROM reservations
    WHERE status = 'PENDING' AND lapses_at <= (SELECT now FROM clock)
    ORDER BY lapses_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT claimed.*,
       (SELECT now FROM clock) AS db_now,
       (SELECT count(*) FROM reservations
        WHERE status = 'PENDING' AND lapses_at <= (SELECT now FROM clock)) AS due,
       (SELECT min(lapses_at) FROM reservations
        WHERE status = 'PENDING' AND id NOT IN (SELECT id FROM claimed)) AS next_lapse_at
FROM (SELECT) AS one LEFT JOIN claimed ON true;

-- name: lock_events
SELECT * FROM events WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE;
