"""Every Prometheus series slotlock exports, in one place (deploy/grafana-dashboard.json reads
these names), and the HTTP endpoint each service serves them on.

Each service process exports only what it touches: the reservation service the RPC, hold,
batch, database, expiry and outbox series; the availability service the RPC, feed, view and
watcher series; the gateway its SSE clients. The endpoint is off unless the service's
``SLOTLOCK_*_METRICS_PORT`` is set (README, "Metrics").
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from a fast in-memory read (0.5 ms) to a slow database call (10 s).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- every gRPC server (slotlock.grpc_errors) ---------------------------------------------------
# The names and labels of go-grpc-prometheus, which most gRPC dashboards expect.
RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, by status code (a watch stream: its life).",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
    buckets=_LATENCY,
)

# --- reservation service ---------------------------------------------------------------------
HOLD_CHANGES = Counter(
    "slotlock_hold_changes_total",
    "Committed hold changes, by kind: created, confirmed, released, expired, refunded.",
    ["change"],
)
HOLD_BATCH_SIZE = Histogram(
    "slotlock_hold_batch_size",
    "CreateHold requests placed in one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
HOLD_BATCH_SECONDS = Histogram(
    "slotlock_hold_batch_seconds",
    "Time to place one batch of holds: its transaction, retries included.",
    buckets=_LATENCY,
)
DB_RETRIES = Counter(
    "slotlock_db_transaction_retries_total",
    "Transactions run again after a transient failure, by the failure's name.",
    ["reason"],
)
EXPIRY_LAG = Gauge(
    "slotlock_expiry_lag_seconds",
    "How long past its expires_at the oldest PENDING hold is (0: nothing overdue).",
)
OUTBOX_BACKLOG = Gauge(
    "slotlock_outbox_unpublished",
    "Outbox rows not yet published to the feed.",
)
OUTBOX_OLDEST_AGE = Gauge(
    "slotlock_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row (0: none waiting).",
)
OUTBOX_PUBLISHED = Counter(
    "slotlock_outbox_published_total",
    "Outbox rows published to the feed and acknowledged (rate() is the relay's publish rate).",
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "slotlock_outbox_publish_failures_total",
    "Relay rounds that stopped on a failed publish (NATS down or slow).",
)

# --- availability service --------------------------------------------------------------------
FEED_LAG = Gauge(
    "slotlock_feed_lag_seconds",
    "Seconds since the view last held everything on the feed (grows while disconnected).",
)
FEED_DELAY = Histogram(
    "slotlock_feed_delay_seconds",
    "From a change being stored on the stream to the view applying it (live tail only).",
    buckets=_LATENCY,
)
FEED_PENDING = Gauge(
    "slotlock_feed_pending_messages",
    "Messages on the stream the view has not applied yet, as of the last one received.",
)
FEED_APPLIED = Counter(
    "slotlock_feed_changes_applied_total",
    "Changes the view accepted (newer than what it held).",
)
FEED_RESYNCS = Counter(
    "slotlock_feed_resyncs_total",
    "Rebuilds from the last message per event (start, reconnect, gap).",
)
VIEW_REBUILD_SECONDS = Gauge(
    "slotlock_view_rebuild_seconds",
    "How long the last rebuild of the view took.",
)
VIEW_EVENTS = Gauge("slotlock_view_events", "Events in the availability view.")
WATCHERS = Gauge("slotlock_watchers", "Open WatchAvailability streams.")

# --- gateway ---------------------------------------------------------------------------------
SSE_CLIENTS = Gauge("slotlock_gateway_sse_clients", "Browsers following the live listing.")


def serve(host: str, port: int | None) -> int | None:
    """Serve /metrics on ``host:port`` in a background thread; None (or 0) leaves it off.
    Returns the port served on."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
