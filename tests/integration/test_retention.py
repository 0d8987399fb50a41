"""Retention: published outbox rows, finished reservations of past events, and past events'
subjects on the feed are deleted after their settings' periods; nothing live is touched."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import nats
import psycopg
from psycopg_pool import AsyncConnectionPool

from reservation_service.retention import Housekeeper, Retention, purge_finished_reservations
from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack
from tests.support import StartReservation

DAY = timedelta(days=1)
NOW = datetime.now(UTC)
FINISHED = ("PAID", "CANCELLED", "EXPIRED", "REFUNDED")


def add_event(conn: psycopg.Connection, starts_at: datetime) -> str:
    event_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO events (id, code, experience_title, local_date, local_start_time, time_zone,"
        " starts_at, capacity, status, currency, dinner_price, experience_only_price)"
        " VALUES (%s, %s, 'Dinner show', %s, '19:00', 'UTC', %s, 50, 'SCHEDULED', 'VND', 1, 1)",
        (event_id, f"E-{event_id[:8]}", starts_at.date(), starts_at),
    )
    return event_id


def add_reservation(conn: psycopg.Connection, event_id: str, status: str) -> str:
    reservation_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO reservations (id, event_id, quantity, ticket_type, status, created_at,"
        " updated_at, expires_at) VALUES (%s, %s, 1, 'DINNER', %s, %s, %s, %s)",
        (reservation_id, event_id, status, NOW - 40 * DAY, NOW - 40 * DAY, NOW - 40 * DAY),
    )
    return reservation_id


async def test_finished_reservations_of_past_events_are_deleted(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        old = add_event(conn, NOW - 40 * DAY)
        recent = add_event(conn, NOW - 10 * DAY)
        upcoming = add_event(conn, NOW + 10 * DAY)
        kept = [add_reservation(conn, old, "PENDING")]  # the expirer's, never retention's
        kept += [add_reservation(conn, event, s) for event in (recent, upcoming) for s in FINISHED]
        for status in FINISHED * 3:
            add_reservation(conn, old, status)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2) as pool:
        # batch=5: the 12 rows go in three statements.
        assert await purge_finished_reservations(pool, NOW - 30 * DAY, batch=5) == 12
        assert await purge_finished_reservations(pool, NOW - 30 * DAY, batch=5) == 0
    with psycopg.connect(database_url) as conn:
        left = {str(row[0]) for row in conn.execute("SELECT id FROM reservations").fetchall()}
    assert left == set(kept)


async def test_a_retention_pass_purges_past_subjects_and_old_outbox_rows(
    database_url: str, stack: DevStack, feed: Feed
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        past = add_event(conn, NOW - 8 * DAY)
        long_past = add_event(conn, NOW - 60 * DAY)  # before the look-back: left alone
        live = add_event(conn, NOW - 6 * DAY)
        for published_at in (NOW - 2 * DAY, NOW - DAY + timedelta(hours=2), None):
            conn.execute(
                "INSERT INTO outbox (event_id, payload, published_at) VALUES (%s, '', %s)",
                (live, published_at),
            )
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        await feed.ensure_stream(js)
        for event_id in (past, long_past, live, past):
            await js.publish(feed.subject_for(event_id), b"change")

        async with AsyncConnectionPool(database_url, min_size=1, max_size=2) as pool:
            housekeeper = Housekeeper(pool, feed, Retention())  # the defaults
            purged = await housekeeper.run_once(js, NOW)
            assert (purged.outbox_rows, purged.reservations, purged.subjects) == (1, 0, 1)
            # The next pass looks only at events that passed the horizon since.
            assert (await housekeeper.run_once(js, NOW + timedelta(hours=1))).subjects == 0

        info = await js.stream_info(feed.stream)
        assert info.state.messages == 2
        for event_id, count in ((past, 0), (long_past, 1), (live, 1)):
            subject = feed.subject_for(event_id)
            found = (await js.stream_info(feed.stream, subjects_filter=subject)).state.subjects
            assert (found or {}).get(subject, 0) == count, event_id
    finally:
        await nc.close()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (2,)


async def test_the_relay_sets_the_age_limit_and_does_not_republish_past_events(
    database_url: str, stack: DevStack, feed: Feed, start_reservation: StartReservation
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        past = add_event(conn, NOW - 8 * DAY)
        live = add_event(conn, NOW + 8 * DAY)
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        await feed.ensure_stream(js)  # as the availability service would: no age limit
        assert not (await js.stream_info(feed.stream)).config.max_age
        server = await start_reservation(stream_max_age_s=30 * 86400.0)
        assert server.relay is not None
        subjects: dict[str, int] = {}
        for _ in range(100):  # the relay connects, then reconciles the feed against Postgres
            info = await js.stream_info(feed.stream, subjects_filter=f"{feed.subject_prefix}.*")
            subjects = info.state.subjects or {}
            if feed.subject_for(live) in subjects:
                break
            await asyncio.sleep(0.1)
        assert info.config.max_age == 30 * 86400.0
        # The live event's state was re-published; the past one's subject stays purged.
        assert feed.subject_for(live) in subjects
        assert feed.subject_for(past) not in subjects
    finally:
        await nc.close()
