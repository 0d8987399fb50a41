"""``python -m availability_service`` / ``slotlock-availability``: read settings, serve until
SIGTERM or SIGINT, then shut down cleanly.

With SLOTLOCK_WORKERS=N the replica is N processes sharing the port (``slotlock.workers``, as the
reservation service does). Writing an update to thousands of watch streams is gRPC's work, one
stream after the other in one event loop; N processes each write to the watchers the kernel gave
them, in parallel. Each worker follows the feed itself (its own ordered consumer) and keeps its
own view, so each costs the memory of one replica.
"""

from __future__ import annotations

import os

from availability_service.server import run_one
from availability_service.settings import Settings
from slotlock import settings as slotlock_settings
from slotlock import workers


def main() -> None:
    settings = slotlock_settings.load("slotlock-availability", Settings.from_env, os.environ)
    if settings.workers > 1:
        raise SystemExit(workers.run_workers("slotlock-availability", settings, run_one))
    run_one(settings)


if __name__ == "__main__":
    main()
