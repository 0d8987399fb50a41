"""Readiness that follows Postgres: a background probe, and an outage logged once.

Every ``probe_s`` the probe runs ``SELECT 1`` through the pool, bounded by ``probe_s``. A failure
turns the replica NOT_SERVING at once (calls already answer UNAVAILABLE within
``SLOTLOCK_DB_UNAVAILABLE_AFTER_S``); the first success turns it SERVING again, after the pool has
dropped the idle connections the outage killed, so the first calls after it do not land on them.
The probe is also what keeps asking the pool for a connection during an outage, which makes it
reconnect within about a second of Postgres returning (see ``server.RECONNECT_GIVE_UP_S``).

An outage is two log lines, however long it lasts: when it starts, and when it ends with its
duration and how many calls were answered UNAVAILABLE meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import PoolTimeout

from reservation_service.db import Database

log = logging.getLogger(__name__)

OnChange = Callable[[bool], Awaitable[object]]


class DatabaseProbe:
    def __init__(self, database: Database, on_change: OnChange, *, probe_s: float = 1.0) -> None:
        self._database = database
        self._on_change = on_change
        self._probe_s = probe_s
        self.reachable = True
        self.down_since: float | None = None  # monotonic start of the current outage
        self.outages = 0
        self._failed_probes = 0
        self._unavailable_before = 0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            problem = await self.probe_once()
            if problem is None:
                await self._up()
            else:
                await self._down(problem)
            await asyncio.sleep(max(0.0, self._probe_s - (time.monotonic() - started)))

    async def probe_once(self) -> str | None:
        """None if Postgres answered within ``probe_s``; else what went wrong, in a few words."""
        try:
            async with asyncio.timeout(self._probe_s):
                async with self._database.pool.connection(timeout=self._probe_s) as conn:
                    await conn.execute("SELECT 1")
        except (TimeoutError, PoolTimeout):
            return f"no answer within {self._probe_s:g} s"
        except (psycopg.Error, OSError) as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            return f"{type(error).__name__}: {first_line}"
        return None

    async def _down(self, problem: str) -> None:
        self._failed_probes += 1
        if not self.reachable:
            return
        self.reachable = False
        self.down_since = time.monotonic()
        self.outages += 1
        self._unavailable_before = self._database.unavailable
        log.warning(
            "Postgres is unreachable (%s): NOT_SERVING, calls answer UNAVAILABLE until it is back",
            problem,
        )
        await self._on_change(False)

    async def _up(self) -> None:
        if self.reachable:
            return
        # Drop the connections the outage killed before sending traffic back.
        await self._database.pool.check()
        down_for = time.monotonic() - (self.down_since or time.monotonic())
        log.warning(
            "Postgres is reachable again after %.1f s (%d failed probes, %d calls answered "
            "UNAVAILABLE): SERVING",
            down_for,
            self._failed_probes,
            self._database.unavailable - self._unavailable_before,
        )
        self.reachable = True
        self.down_since = None
        self._failed_probes = 0
        await self._on_change(True)
