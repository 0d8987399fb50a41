"""Only the relay writes the feed (issue 9, item 5): on a NATS server with credentials the
availability service's user is refused when it publishes, and a message the relay did not write
(a forged version ahead of the database, or bytes that are no change at all) is repaired by the
relay's reconciliation: the view ends up showing the database's counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import psycopg
import pytest

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from reservation_service.outbox import OutboxRelay
from slotlock.feed import Feed
from slotlock.v1 import (
    availability_pb2,
    availability_pb2_grpc,
    catalog_pb2,
    changes_pb2,
)
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from slotlock_cli.devstack import NATS_USERS, EmbeddedNats, stored_password
from tests.support import TEST_SECURITY, StartReservation, open_channel

FIRST_ID = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def locked_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server of this test's own, with the dev stack's users and permissions."""
    server = EmbeddedNats(
        tmp_path / "nats",
        passwords={user: stored_password(tmp_path / "secrets", user) for user in NATS_USERS},
    )
    server.start()
    yield server
    server.stop()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def test_the_reader_cannot_write_the_feed_and_reconciliation_repairs_one_ahead(
    start_reservation: StartReservation,
    locked_nats: EmbeddedNats,
    feed: Feed,
    database_url: str,
) -> None:
    reservation = await start_reservation(nats_url=locked_nats.url_for("reservation"))
    assert reservation.relay is not None
    relay: OutboxRelay = reservation.relay
    availability = await AvailabilityServer(
        AvailabilitySettings(
            nats_url=locked_nats.url_for("availability"),
            feed=feed,
            port=0,
            security=TEST_SECURITY,
        ),
        heartbeat_s=0.5,
    ).start()
    try:
        async with (
            open_channel(f"127.0.0.1:{reservation.port}") as rchannel,
            open_channel(availability.address) as achannel,
        ):
            booking = ReservationServiceStub(rchannel)
            view = availability_pb2_grpc.AvailabilityServiceStub(achannel)
            # Changes made with UpsertEvent alone (capacity), so that this test is about the feed.
            await booking.UpsertEvent(event_request("TRUST-1", capacity=10))
            event = await booking.UpsertEvent(event_request("TRUST-1", capacity=8))

            async def shown() -> availability_pb2.EventAvailability:
                reply: availability_pb2.EventAvailability = await view.GetEventAvailability(
                    availability_pb2.GetEventAvailabilityRequest(event_id=event.id)
                )
                return reply

            async def shows(available: int) -> bool:
                try:
                    return (await shown()).available == available
                except Exception:  # not on the view yet
                    return False

            await eventually(lambda: shows(8), "the hold on the view")
            honest = await shown()

            def forged(version: int) -> bytes:
                state = catalog_pb2.Event()
                state.CopyFrom(event)
                state.version, state.paid, state.pending = version, 10, 0
                return changes_pb2.EventChange(
                    type=changes_pb2.CHANGE_TYPE_HOLD_CONFIRMED, event=state
                ).SerializeToString()

            # 1. The availability service's user may not publish: NATS refuses, nothing lands.
            refusals: list[Exception] = []

            async def on_error(error: Exception) -> None:
                refusals.append(error)

            reader = await nats.connect(locked_nats.url_for("availability"), error_cb=on_error)
            try:
                with pytest.raises(TimeoutError):  # no ack: the server dropped it
                    await reader.jetstream(timeout=1).publish(
                        feed.subject_for(event.id), forged(1000)
                    )
                with pytest.raises(TimeoutError):  # nor may it empty the stream
                    await reader.jetstream(timeout=1).purge_stream(feed.stream)
            finally:
                await reader.close()
            assert any("permissions violation" in str(e).lower() for e in refusals), refusals
            await asyncio.sleep(0.5)
            assert (await shown()).available == 8

            # 2. A message ahead of the database (written here with the admin user, as a
            # forger with publish rights or a database restored from a backup would leave it)
            # wins on the view by the version rule...
            admin = await nats.connect(locked_nats.url)
            try:
                await admin.jetstream().publish(feed.subject_for(event.id), forged(1000))
                await eventually(lambda: shows(0), "the forged state on the view")
                # ...until reconciliation moves the database's version past it and publishes.
                repaired, _ = await relay.reconcile_page(FIRST_ID)
                assert repaired == 1
                await eventually(lambda: shows(8), "the database's counts back on the view")
                after = await shown()
                assert (after.paid, after.pending, after.version) == (0, 0, 1001)
                assert after.version > honest.version
                with psycopg.connect(database_url) as conn:
                    row = conn.execute(
                        "SELECT version FROM events WHERE id = %s", (event.id,)
                    ).fetchone()
                assert row == (1001,)
                assert await relay.reconcile_page(FIRST_ID) == (0, None)  # in step now

                # Later changes count on from the new version and reach the view.
                await booking.UpsertEvent(event_request("TRUST-1", capacity=7))
                await eventually(lambda: shows(7), "a change after the repair")

                # 3. Bytes that are no change at all: the view ignores them, and
                # reconciliation puts the event's state back as the subject's last message.
                await admin.jetstream().publish(feed.subject_for(event.id), b"\xff\xffjunk")
                repaired, _ = await relay.reconcile_page(FIRST_ID)
                assert repaired == 1
                last = await admin.jetstream().get_last_msg(feed.stream, feed.subject_for(event.id))
                assert last.data is not None
                change = changes_pb2.EventChange.FromString(last.data)
                assert change.type == changes_pb2.CHANGE_TYPE_STATE_SNAPSHOT
                assert (change.event.available, change.event.version) == (7, 1002)
                assert change.event.version == (await shown()).version  # nothing to jump
                assert (await shown()).available == 7
            finally:
                await admin.close()
    finally:
        await availability.stop(grace=0)
