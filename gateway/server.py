"""The gateway's uvicorn server, one process of it (``run_one``), as ``python -m gateway`` runs
it; in a module of its own because worker processes are spawned and find ``run_one`` by name.

With SLOTLOCK_WORKERS=N the gateway is N processes sharing the port (``slotlock.workers``, as the
services do; the kernel spreads connections over them). One process writes live updates to its
browsers from one event loop, one ``send`` per browser per change; N processes each write to
their share in parallel. Each worker is a whole gateway: its own watch on the availability
service, its own browsers (``SLOTLOCK_GATEWAY_*`` limits apply per worker: the holds per address
per minute, the 10,000 browsers), its own metrics port (the metrics port + n).
"""

from __future__ import annotations

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from slotlock import logs, metrics
from slotlock.grpc_server import shared_socket
from slotlock.process_title import set_title

# Browsers keep Server-Sent Events streams open forever; do not wait for them on shutdown.
GRACEFUL_SHUTDOWN_S = 1


def build_server(settings: Settings, *, log_level: str = "info") -> uvicorn.Server:
    """The uvicorn server for ``settings`` (tests run it in their own event loop)."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
        log_config=None,  # uvicorn's loggers reach the root handler: one format (slotlock.logs)
    )
    return uvicorn.Server(config)


def run_one(settings: Settings, worker: str = "") -> None:
    """One gateway process (all of it with one worker) until SIGTERM or SIGINT."""
    logs.configure(settings.log_level, settings.telemetry.log_format)
    set_title("slotlock-gateway", settings.port, worker)
    metrics.serve(settings.host, settings.telemetry.metrics_port)
    server = build_server(settings, log_level=settings.log_level.lower())
    if settings.workers > 1:
        server.run(sockets=[shared_socket(settings.host, settings.port)])
    else:
        server.run()
