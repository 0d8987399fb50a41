"""`python -m reservation_service` (or `slotlock-reservation`): run one replica.

With SLOTLOCK_WORKERS=N the replica is N processes sharing the port (SO_REUSEPORT, among its own
workers only: the parent holds the port, so another replica on it fails to start). A Python
process spends most of a hold's CPU in gRPC itself, so one process per core is how a replica uses
the machine. Workers share nothing but the database: each batches its own holds, every expirer
shares due holds through SKIP LOCKED, and one relay at a time is active.
"""

from __future__ import annotations

import os

from reservation_service.server import run_one, run_workers
from reservation_service.settings import Settings
from slotlock import settings as slotlock_settings


def main() -> None:
    settings = slotlock_settings.load("slotlock-reservation", Settings.from_env, os.environ)
    if settings.workers > 1:
        raise SystemExit(run_workers(settings))
    run_one(settings)


if __name__ == "__main__":
    main()
