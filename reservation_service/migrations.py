"""The numbered SQL migrations: applied by `slotlock migrate`, or at start-up unless
SLOTLOCK_MIGRATE_ON_START is false, under an advisory lock so that replicas starting together
apply each one exactly once. A service that may not run DDL checks instead that nothing is
missing (``missing_migrations``) and refuses to start otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from reservation_service import sql

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x510710C  # any constant shared by every replica


@dataclass(frozen=True, order=True)
class Migration:
    version: int
    name: str

    def __str__(self) -> str:
        return f"{self.version:04d}_{self.name}"


async def apply_migrations(conninfo: str) -> list[Migration]:
    """Apply what is missing; return the migrations applied now, in order."""
    applied_now: list[Migration] = []
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, text in sql.migrations():
            if version in done:
                continue
            await conn.execute(text.encode())  # bytes: run as one multi-statement script
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
            migration = Migration(version, name)
            log.info("applied migration %s", migration)
            applied_now.append(migration)
    return applied_now


async def missing_migrations(conninfo: str) -> list[Migration]:
    """The migrations this release has that the database lacks (read-only: no DDL, no lock)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cur.fetchone()
        done: set[int] = set()
        if row and row[0]:
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {r[0] for r in await cur.fetchall()}
    return [Migration(v, name) for v, name, _ in sql.migrations() if v not in done]


class SchemaNotCurrent(Exception):
    """The database lacks migrations and this service may not apply them; one line to print."""

    def __init__(self, missing: list[Migration]) -> None:
        names = ", ".join(str(m) for m in missing)
        super().__init__(
            f"the database lacks migration{'s' if len(missing) > 1 else ''} {names}: run "
            "`slotlock migrate` (SLOTLOCK_MIGRATE_ON_START is false)"
        )
        self.missing = missing


async def check_schema_current(conninfo: str) -> None:
    """Raise ``SchemaNotCurrent`` when a migration of this release has not been applied."""
    missing = await missing_migrations(conninfo)
    if missing:
        raise SchemaNotCurrent(missing)
