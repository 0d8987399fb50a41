"""The outbox relay: every committed change reaches JetStream exactly once, in order per event,
even when NATS stops and starts again mid-stream."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import nats
import nats.js.errors
import psycopg
import pytest

from reservation_service import convert
from reservation_service.application import Hold
from reservation_service.holds import HoldRequest, TicketType
from reservation_service.outbox import with_change_id
from slotlock.feed import Feed
from slotlock.v1 import changes_pb2, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from slotlock_cli.devstack import DevStack, EmbeddedNats
from tests.support import StartReservation, open_channel


def test_change_id_is_appended_without_reencoding() -> None:
    change = changes_pb2.EventChange(type=changes_pb2.CHANGE_TYPE_HOLD_CREATED)
    change.event.version = 7
    for change_id in (1, 127, 128, 300, 2**40):
        parsed = changes_pb2.EventChange.FromString(
            with_change_id(change.SerializeToString(), change_id)
        )
        assert parsed.change_id == change_id
        assert parsed.event.version == 7


async def read_stream(nats_url: str, feed: Feed) -> list[tuple[str, int, changes_pb2.EventChange]]:
    """Every message in the stream, in stream order: (subject, msg id header, change)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(feed.stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(feed.stream, seq)
            assert msg.headers is not None
            found.append(
                (
                    msg.subject,
                    int(msg.headers["Nats-Msg-Id"]),
                    changes_pb2.EventChange.FromString(msg.data),
                )
            )
        return found
    finally:
        await nc.close()


async def wait_all_published(database_url: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE published_at IS NULL), count(*) FROM outbox"
            ).fetchone()
            assert row is not None
            if row[0] == 0:
                return int(row[1])
            assert time.monotonic() < deadline, f"{row[0]} outbox rows still unpublished"
            await asyncio.sleep(0.1)


async def test_every_change_arrives_once_in_order_across_a_nats_outage(
    start_reservation: StartReservation, own_nats: EmbeddedNats, feed: Feed, database_url: str
) -> None:
    server = await start_reservation(nats_url=own_nats.url, hold_ttl_s=60)
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        events = [
            await stub.UpsertEvent(event_request(f"RELAY-{i}", capacity=1000)) for i in range(3)
        ]
        rng = random.Random(3)

        async def churn(rounds: int) -> None:
            for _ in range(rounds):
                event = rng.choice(events)
                created = await stub.CreateHold(
                    reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=rng.randint(1, 3))
                )
                if rng.random() < 0.5:
                    await stub.ReleaseHold(
                        reservation_pb2.ReleaseHoldRequest(
                            reservation_id=created.reservation.id, hold_token=created.hold_token
                        )
                    )

        await asyncio.gather(*(churn(15) for _ in range(4)))
        own_nats.stop()  # the broker goes away mid-stream; writes go on
        await asyncio.gather(*(churn(15) for _ in range(4)))
        with psycopg.connect(database_url) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            ).fetchone()
        assert waiting is not None and waiting[0] > 0, "rows should wait while NATS is down"
        own_nats.start()
        await asyncio.gather(*(churn(10) for _ in range(4)))
        total = await wait_all_published(database_url)

    messages = await read_stream(own_nats.url, feed)
    with psycopg.connect(database_url) as conn:
        outbox_ids = [
            row[0] for row in conn.execute("SELECT id FROM outbox ORDER BY id").fetchall()
        ]
        final = dict(conn.execute("SELECT id::text, version FROM events").fetchall())
    assert len(outbox_ids) == total
    ids = [msg_id for _, msg_id, _ in messages]
    assert sorted(ids) == outbox_ids, "each committed change exactly once"
    by_event: dict[str, list[int]] = defaultdict(list)
    for subject, msg_id, change in messages:
        assert change.change_id == msg_id
        assert subject == feed.subject_for(change.event.id)
        by_event[change.event.id].append(change.event.version)
    for event_id, versions in by_event.items():
        assert versions == list(range(1, final[event_id] + 1)), f"event {event_id} out of order"


async def test_relay_standby_replica_takes_over(
    start_reservation: StartReservation, feed: Feed, database_url: str, stack: object
) -> None:
    first = await start_reservation()
    second = await start_reservation()
    async with open_channel(f"127.0.0.1:{second.port}") as channel:
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("RELAY-HA", capacity=100))
        await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1))
        await wait_all_published(database_url, timeout=10)
        await first.stop(grace=0)
        await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=2))
        total = await wait_all_published(database_url, timeout=10)
    assert first.relay is not None and second.relay is not None
    assert first.relay.published + second.relay.published == total == 3


async def test_relay_repairs_a_feed_that_lost_messages(
    start_reservation: StartReservation, stack: DevStack, feed: Feed, database_url: str
) -> None:
    """Postgres is the truth: if JetStream loses acknowledged messages (or the stream is purged),
    the relay re-publishes each event's current state, at the database's version."""
    first = await start_reservation()
    async with open_channel(f"127.0.0.1:{first.port}") as channel:
        stub = ReservationServiceStub(channel)
        events = [await stub.UpsertEvent(event_request(f"HEAL-{i}", capacity=50)) for i in range(3)]
        for event in events:
            await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=2))
        await wait_all_published(database_url, timeout=10)
    await first.stop(grace=0)

    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        await js.purge_stream(feed.stream)  # the broker "forgot" everything
        await start_reservation()
        with psycopg.connect(database_url) as conn:
            truth = dict(conn.execute("SELECT id::text, version FROM events").fetchall())
        deadline = time.monotonic() + 10
        while True:
            on_feed = {}
            for event_id in truth:
                try:
                    msg = await js.get_last_msg(feed.stream, feed.subject_for(event_id))
                except nats.js.errors.NotFoundError:
                    continue
                change = changes_pb2.EventChange.FromString(msg.data)
                assert change.type == changes_pb2.CHANGE_TYPE_STATE_SNAPSHOT
                on_feed[event_id] = change.event.version
            if on_feed == truth:
                break
            assert time.monotonic() < deadline, f"feed {on_feed} != database {truth}"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def too_large_for(payload: bytes, max_payload: int) -> bytes:
    """``payload`` grown past ``max_payload`` with an unknown field (still valid protobuf)."""
    size = max_payload + 1
    tag, length = (9999 << 3) | 2, size
    extra = bytearray()
    for value in (tag, length):
        while value > 0x7F:
            extra.append((value & 0x7F) | 0x80)
            value >>= 7
        extra.append(value)
    return payload + bytes(extra) + b"x" * size


async def test_relay_sets_aside_a_row_it_cannot_publish_and_goes_on(
    start_reservation: StartReservation,
    stack: DevStack,
    feed: Feed,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One outbox row over NATS's max_payload (nats-py refuses it before sending) must not stall
    the relay: it is dead-lettered with its reason and one ERROR, the event's current state goes
    out as a snapshot, and every row behind it is published in order."""
    writer = await start_reservation(run_relay=False)  # rows wait until a relay starts
    app = writer.reservations
    assert app is not None

    async def hold(event_id: str, quantity: int) -> Hold:
        return await app.create_hold(HoldRequest(event_id, quantity, TicketType.DINNER, "", None))

    event = await app.upsert_event(convert.event_spec_from_proto(event_request("STUCK-1", 50)))
    other = await app.upsert_event(convert.event_spec_from_proto(event_request("STUCK-2", 50)))
    first = await hold(event.id, 2)
    await hold(event.id, 3)
    nc = await nats.connect(stack.nats_url)
    max_payload = nc.max_payload
    await nc.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, payload FROM outbox WHERE event_id = %s ORDER BY id DESC LIMIT 1",
            (event.id,),
        ).fetchone()
        assert row is not None
        stuck_id = int(row[0])
        conn.execute(
            "UPDATE outbox SET payload = %s WHERE id = %s",
            (too_large_for(bytes(row[1]), max_payload), stuck_id),
        )
    # Behind the stuck row: more changes of the same event and of another one.
    await app.confirm_hold(first.reservation.id, first.token, "pay-1")
    await hold(event.id, 1)
    for _ in range(3):
        await hold(other.id, 1)

    relay_server = await start_reservation()
    relay = relay_server.relay
    assert relay is not None
    deadline = time.monotonic() + 15
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            waiting = conn.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND id <> %s", (stuck_id,)
            ).fetchone()
            assert waiting is not None
            if waiting[0] == 0 and relay.dead_lettered == 1:
                break
            assert time.monotonic() < deadline, f"{waiting[0]} rows behind the stuck one wait"
            await asyncio.sleep(0.1)
        dead = conn.execute(
            "SELECT id, published_at, dead_lettered_at, dead_letter_reason FROM outbox"
            " WHERE dead_lettered_at IS NOT NULL"
        ).fetchall()
        truth = conn.execute(
            "SELECT version, paid, pending FROM events WHERE id = %s", (event.id,)
        ).fetchone()
        others = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM outbox WHERE id <> %s ORDER BY id", (stuck_id,)
            ).fetchall()
        ]
    assert len(dead) == 1 and dead[0][0] == stuck_id and dead[0][1] is None
    assert "MaxPayload" in dead[0][3], dead[0][3]
    assert await relay.dead_letters() == [(stuck_id, event.id, dead[0][3])]
    assert truth == (5, 2, 4)

    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(feed.stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(feed.stream, seq)
            messages.append((msg.subject, changes_pb2.EventChange.FromString(msg.data)))
    finally:
        await nc.close()
    published_ids = [change.change_id for _, change in messages if change.change_id]
    assert sorted(published_ids) == others, "every other row, once"
    of_event = [change for subject, change in messages if subject == feed.subject_for(event.id)]
    snapshots = [c for c in of_event if c.type == changes_pb2.CHANGE_TYPE_STATE_SNAPSHOT]
    assert len(snapshots) == 1
    last = max(of_event, key=lambda c: c.event.version)
    assert (last.event.version, last.event.paid, last.event.pending) == truth
    assert of_event[-1].event.version == truth[0], "the feed ends at the database's state"
    errors_logged = [
        r for r in caplog.records if r.levelname == "ERROR" and str(stuck_id) in r.getMessage()
    ]
    assert len(errors_logged) == 1
