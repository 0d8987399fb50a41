-- name: operations_gauges
-- Read every few seconds for the metrics endpoint; each part walks a partial index from its start.
SELECT
    (SELECT count(*) FROM outbox
      WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS outbox_unpublished,
    (SELECT extract(epoch FROM clock_timestamp() - created_at) FROM outbox
      WHERE published_at IS NULL AND dead_lettered_at IS NULL
      ORDER BY id LIMIT 1) AS outbox_oldest_s,
    (SELECT extract(epoch FROM clock_timestamp() - min(expires_at)) FROM reservations
      WHERE status = 'PENDING' AND expires_at < clock_timestamp()) AS expiry_lag_s;
