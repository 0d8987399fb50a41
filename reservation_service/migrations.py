"""Apply the numbered SQL migrations at start-up, under an advisory lock so that replicas
starting together apply each one exactly once."""

from __future__ import annotations

import logging

import psycopg

from reservation_service import sql

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x510710C  # any constant shared by every replica


async def apply_migrations(conninfo: str) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[int] = []
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
            log.info("applied migration %04d_%s", version, name)
            applied_now.append(version)
    return applied_now
