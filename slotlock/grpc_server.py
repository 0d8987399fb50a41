"""gRPC server options both services use."""

from __future__ import annotations

import grpc

from slotlock.grpc_errors import ErrorInterceptor

SERVER_OPTIONS: list[tuple[str, int]] = [
    # Find dead peers (watchers above all) within ~30 s; clients may ping every 10 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_concurrent_streams", 100_000),
    # grpc.aio takes calls from the core one at a time; in a burst the core's queue of calls not
    # yet taken (soft 1000 / hard 3000 by default) overflows and it sheds new calls as CANCELLED,
    # before any handler runs. Seen with 5,000 watchers connecting at once, and with CreateHold at
    # 1,000/s over 20 events. Deadlines still bound how long a queued call waits.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


def create_server() -> grpc.aio.Server:
    """A grpc.aio server with slotlock's options and interceptors (errors mapped once)."""
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=[ErrorInterceptor()])
