"""`python -m gateway`: serve the listing page and its API with uvicorn."""

from __future__ import annotations

import logging
import os

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from slotlock import settings as slotlock_settings

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
    )
    return uvicorn.Server(config)


def main() -> None:
    settings = slotlock_settings.load("gateway", Settings.from_env, os.environ)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    build_server(settings, log_level=settings.log_level.lower()).run()


if __name__ == "__main__":
    main()
