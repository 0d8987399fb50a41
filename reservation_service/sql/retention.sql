-- name: purge_published_outbox
-- Published rows are only kept for debugging (the feed has the messages).
DELETE FROM outbox WHERE published_at < %(before)s;

-- name: purge_finished_reservations
-- Finished reservations of events that started before the horizon, a batch per statement so that
-- no transaction runs long. Nothing else writes these rows: holds and the expirer touch PENDING
-- ones only, and a refund after the horizon is refused as NOT_FOUND (the setting's README note).
DELETE FROM reservations WHERE id IN (
    SELECT r.id FROM reservations r JOIN events e ON e.id = r.event_id
    WHERE e.starts_at < %(before)s
      -- PAYMENT_TO_REFUND is not finished: it waits for its refund.
      AND r.status IN ('PAID', 'CANCELLED', 'EXPIRED', 'REFUNDED')
    LIMIT %(limit)s
)
-- Again on the row deleted: a late payment may have turned an EXPIRED row into PAYMENT_TO_REFUND
-- while this DELETE waited for its lock, and Postgres re-checks only the outer condition.
AND status IN ('PAID', 'CANCELLED', 'EXPIRED', 'REFUNDED');

-- name: purge_history
-- History rows (migration 0006) past SLOTLOCK_KEEP_HISTORY_S, a batch per statement.
DELETE FROM history WHERE id IN (
    SELECT id FROM history WHERE occurred_at < %(before)s ORDER BY occurred_at LIMIT %(limit)s
);

-- name: events_started_between
SELECT id::text AS id FROM events
WHERE starts_at >= %(after)s AND starts_at < %(before)s
ORDER BY starts_at, id;
