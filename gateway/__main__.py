"""`python -m gateway`: serve the listing page and its API with uvicorn (``gateway.server``;
SLOTLOCK_WORKERS=N: N processes sharing the port)."""

from __future__ import annotations

import os

from gateway.server import GRACEFUL_SHUTDOWN_S, build_server, run_one
from gateway.settings import Settings
from slotlock import settings as slotlock_settings
from slotlock import workers

__all__ = ["GRACEFUL_SHUTDOWN_S", "build_server", "main"]


def main() -> None:
    settings = slotlock_settings.load("gateway", Settings.from_env, os.environ)
    if settings.workers > 1:
        raise SystemExit(workers.run_workers("slotlock-gateway", settings, run_one))
    run_one(settings)


if __name__ == "__main__":
    main()
