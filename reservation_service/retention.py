"""Retention: what the reservation service deletes, and when (README, "Retention").

- published outbox rows, ``keep_published_outbox_s`` after they were published;
- an event's subject on the feed, ``keep_past_event_subjects_s`` after the event started: the
  stream then holds live events only, and a cold-starting availability service reads only them;
- finished reservations (PAID, CANCELLED, EXPIRED, REFUNDED) of events that started more than
  ``keep_finished_reservations_s`` ago; PENDING ones are the expirer's and are never touched.

A period of 0 keeps forever. The outbox relay runs ``Housekeeper.run_once`` every few minutes,
so exactly one replica does it at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.js import JetStreamContext

from reservation_service import sql
from reservation_service.db import Pool
from slotlock.feed import Feed

log = logging.getLogger(__name__)

QUERIES = sql.queries("retention.sql")


@dataclass(frozen=True)
class Retention:
    keep_published_outbox_s: float = 86400.0
    keep_past_event_subjects_s: float = 7 * 86400.0  # 0 = keep forever
    keep_finished_reservations_s: float = 0.0  # 0 = keep forever
    keep_history_s: float = 0.0  # 0 = keep forever (the service's default is 400 days)
    # After a (re)start, subjects of events that passed the horizon up to this long before it are
    # purged again (a no-op for those already gone): the relay keeps no record of what it purged.
    subject_lookback_s: float = 30 * 86400.0

    def subject_horizon(self, now: datetime) -> datetime | None:
        """Events that started before this have no subject on the feed (None: all do)."""
        if not self.keep_past_event_subjects_s:
            return None
        return now - timedelta(seconds=self.keep_past_event_subjects_s)


@dataclass(frozen=True)
class Purged:
    outbox_rows: int = 0
    reservations: int = 0
    subjects: int = 0


async def purge_published_outbox(pool: Pool, before: datetime) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(QUERIES["purge_published_outbox"], {"before": before})
        return cur.rowcount


async def purge_finished_reservations(pool: Pool, before: datetime, *, batch: int = 1000) -> int:
    """Delete finished reservations of events that started before ``before``; how many."""
    deleted = 0
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                QUERIES["purge_finished_reservations"], {"before": before, "limit": batch}
            )
        deleted += cur.rowcount
        if cur.rowcount < batch:
            return deleted


async def purge_history(pool: Pool, before: datetime, *, batch: int = 5000) -> int:
    """Delete history rows older than ``before``, a batch per statement; how many."""
    deleted = 0
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(QUERIES["purge_history"], {"before": before, "limit": batch})
        deleted += cur.rowcount
        if cur.rowcount < batch:
            return deleted


async def events_started_between(pool: Pool, after: datetime, before: datetime) -> list[str]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            QUERIES["events_started_between"], {"after": after, "before": before}
        )
        return [str(row[0]) for row in await cur.fetchall()]


async def purge_event_subjects(js: JetStreamContext, feed: Feed, event_ids: list[str]) -> None:
    """Remove every message of these events from the stream (JetStream's purge by subject)."""
    for event_id in event_ids:
        await js.purge_stream(feed.stream, subject=feed.subject_for(event_id))


class Housekeeper:
    """One retention pass at a time; remembers how far subjects have been purged."""

    def __init__(self, pool: Pool, feed: Feed, retention: Retention) -> None:
        self._pool = pool
        self._feed = feed
        self.retention = retention
        self._subjects_purged_until: datetime | None = None

    async def run_once(self, js: JetStreamContext, now: datetime) -> Purged:
        r = self.retention
        outbox_rows = await purge_published_outbox(
            self._pool, now - timedelta(seconds=r.keep_published_outbox_s)
        )
        reservations = 0
        if r.keep_finished_reservations_s:
            reservations = await purge_finished_reservations(
                self._pool, now - timedelta(seconds=r.keep_finished_reservations_s)
            )
        if r.keep_history_s:
            await purge_history(self._pool, now - timedelta(seconds=r.keep_history_s))
        subjects = 0
        horizon = r.subject_horizon(now)
        if horizon is not None:
            start = self._subjects_purged_until or horizon - timedelta(seconds=r.subject_lookback_s)
            event_ids = await events_started_between(self._pool, start, horizon)
            await purge_event_subjects(js, self._feed, event_ids)
            self._subjects_purged_until = horizon
            subjects = len(event_ids)
        purged = Purged(outbox_rows, reservations, subjects)
        if reservations or subjects:
            log.info(
                "retention: deleted %d finished reservations and the feed subjects of %d past "
                "events",
                reservations,
                subjects,
            )
        return purged
