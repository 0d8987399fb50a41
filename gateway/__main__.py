"""`python -m gateway`: serve the listing page and its API with uvicorn."""

from __future__ import annotations

import os

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from slotlock import logs, metrics
from slotlock import settings as slotlock_settings
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


def main() -> None:
    settings = slotlock_settings.load("gateway", Settings.from_env, os.environ)
    logs.configure(settings.log_level, settings.telemetry.log_format)
    set_title("slotlock-gateway", settings.port)
    metrics.serve(settings.host, settings.telemetry.metrics_port)
    build_server(settings, log_level=settings.log_level.lower()).run()


if __name__ == "__main__":
    main()
