"""`slotlock migrate`: apply the reservation service's database migrations, and nothing else.

Run it before starting replicas whose database role may not run DDL
(SLOTLOCK_MIGRATE_ON_START=false); a replica that finds a migration missing refuses to start.
Safe to run at any time and from several places at once: migrations are applied under an
advisory lock, each exactly once, and a current database gets nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import psycopg

from reservation_service.migrations import apply_migrations, missing_migrations
from reservation_service.settings import Settings
from slotlock.settings import POSTGRES_SCHEMES, Reader, SettingsError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="apply the reservation database's migrations (then services need no DDL rights)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        help="the reservation database (default: SLOTLOCK_DATABASE_URL, else "
        f"{Settings().database_url})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="apply nothing; exit 1 if a migration is missing (for deploy pipelines)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        url = args.database_url or Reader(os.environ).url(
            "SLOTLOCK_DATABASE_URL", Settings().database_url, schemes=POSTGRES_SCHEMES
        )
    except SettingsError as error:
        print(f"slotlock migrate: {error}", file=sys.stderr)
        return 2
    try:
        if args.check:
            missing = asyncio.run(missing_migrations(url))
            for migration in missing:
                print(f"missing {migration}")
            print("the database is current" if not missing else f"{len(missing)} missing")
            return 1 if missing else 0
        applied = asyncio.run(apply_migrations(url))
    except psycopg.Error as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"slotlock migrate: cannot migrate: {reason}", file=sys.stderr)
        return 1
    for migration in applied:
        print(f"applied {migration}")
    if applied:
        plural = "" if len(applied) == 1 else "s"
        print(f"applied {len(applied)} migration{plural}; the database is current")
    else:
        print("nothing to apply: the database is current")
    return 0
