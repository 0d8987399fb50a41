"""Gauges that only the database knows: the outbox backlog, the age of its oldest unpublished row,
and how far overdue the oldest unreleased hold is (the expiry lag). One cheap query every few
seconds, so a scrape never waits on Postgres and a stalled relay or expirer shows even when the
process doing the work is the one that stopped."""

from __future__ import annotations

import asyncio
import logging

from psycopg.rows import dict_row

from reservation_service import sql
from reservation_service.db import Pool
from slotlock import metrics

log = logging.getLogger(__name__)

QUERIES = sql.queries("gauges.sql")


async def read_gauges(pool: Pool) -> None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(QUERIES["operations_gauges"])
        row = await cur.fetchone()
    if row is None:
        return
    metrics.OUTBOX_BACKLOG.set(int(row["outbox_unpublished"]))
    metrics.OUTBOX_OLDEST_AGE.set(max(float(row["outbox_oldest_s"] or 0), 0.0))
    metrics.EXPIRY_LAG.set(max(float(row["expiry_lag_s"] or 0), 0.0))


async def refresh_gauges(pool: Pool, every_s: float = 5.0) -> None:
    """Run until cancelled. While the database is away the gauges keep their last values (the
    outage itself is reported by health and by the transactions that fail)."""
    while True:
        try:
            await read_gauges(pool)
        except Exception as error:  # never let a metrics query take anything down
            log.debug("could not read the operations gauges: %s", error)
        await asyncio.sleep(every_s)
