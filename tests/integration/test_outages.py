"""Outage drills, as an operator runs them, on private servers (other tests are not disturbed):

- Postgres stopped: the reservation service turns NOT_SERVING within seconds, calls answer
  UNAVAILABLE within SLOTLOCK_DB_UNAVAILABLE_AFTER_S (not at the caller's deadline), and service
  resumes, SERVING, within a couple of seconds of Postgres returning, with nothing lost.
- NATS stopped: the availability service turns NOT_SERVING, past its max lag ends watch streams
  with UNAVAILABLE and refuses new ones, and is SERVING and live again after NATS returns.
- SIGTERM-style drain with calls in flight: NOT_SERVING first, new calls refused, the call in
  flight completes.

Each asserts behaviour (codes, health transitions, what is stored); the bounds on time are
generous, for a loaded machine. ``slotlock drill`` prints the actual figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from gateway.fanout import AvailabilityFanout
from gateway.settings import Settings as GatewaySettings
from reservation_service.migrations import apply_migrations
from reservation_service.server import ReservationServer
from reservation_service.settings import Settings as ReservationSettings
from slotlock import client
from slotlock.feed import Feed
from slotlock.health import LIVENESS
from slotlock.v1 import availability_pb2, availability_pb2_grpc, changes_pb2, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_change, event_request, event_snapshot
from slotlock_cli.devstack import DevStack, EmbeddedNats, EmbeddedPostgres
from tests.support import TEST_SECURITY, open_channel, token_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(reply.status)


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until ``check()`` held (polling); fails naming ``what`` after ``within`` s."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A private Postgres this test may stop and start again (same port, same data)."""
    server = EmbeddedPostgres(tmp_path / "pg", durable=False)
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def reservation_on(
    database_url: str, nats_url: str, **overrides: Any
) -> AsyncIterator[tuple[ReservationServer, grpc.aio.Channel]]:
    feed = Feed(stream=f"T_{uuid.uuid4().hex[:10]}", subject_prefix="outage.event")
    settings = ReservationSettings(
        database_url=database_url,
        nats_url=nats_url,
        port=0,
        stream=feed.stream,
        subject_prefix=feed.subject_prefix,
        hold_token_secret="test-secret",
        security=TEST_SECURITY,
        **overrides,
    )
    server = await ReservationServer(settings).start()
    try:
        async with open_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, channel
    finally:
        await server.stop(grace=0)


async def test_postgres_outage_answers_unavailable_fast_and_service_resumes(
    own_postgres: EmbeddedPostgres, stack: DevStack
) -> None:
    url = own_postgres.url()
    await apply_migrations(url)
    async with reservation_on(
        url, stack.nats_url, db_unavailable_after_s=1.0, health_probe_s=0.25
    ) as (_, channel):
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("OUTAGE-PG", capacity=10))
        before = await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(
                event_id=event.id, quantity=2, customer_ref="before", idempotency_key="k-before"
            )
        )
        assert await health_of(channel) == SERVING

        await asyncio.to_thread(own_postgres.stop)
        await eventually(
            lambda: _is(health_of(channel), NOT_SERVING), 5, "NOT_SERVING after Postgres stopped"
        )
        assert await health_of(channel, LIVENESS) == SERVING  # no reason to restart it

        # A caller with a long deadline hears UNAVAILABLE within the setting, not at its deadline.
        async def get_event() -> object:
            return await stub.GetEvent(
                reservation_pb2.GetEventRequest(event_id=event.id), timeout=10
            )

        async def create_hold() -> object:
            return await stub.CreateHold(
                reservation_pb2.CreateHoldRequest(
                    event_id=event.id, quantity=1, customer_ref="during", idempotency_key="k-d"
                ),
                timeout=10,
            )

        for call in (get_event, create_hold):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
            assert time.monotonic() - started < 5  # 1 s setting; 10 s deadline
        # A caller with a short deadline hears UNAVAILABLE before its deadline, not
        # DEADLINE_EXCEEDED.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id), timeout=0.6)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value

        await asyncio.to_thread(own_postgres.start)
        await eventually(
            lambda: _is(health_of(channel), SERVING), 10, "SERVING after Postgres returned"
        )
        after = await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(
                event_id=event.id, quantity=3, customer_ref="after", idempotency_key="k-after"
            ),
            timeout=5,
        )
        current = await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))
        # Nothing lost, nothing doubled: the hold before, the one after, none from the outage.
        assert current.pending == 5, current
        assert before.reservation.id != after.reservation.id


async def _is(status: Awaitable[int], wanted: int) -> bool:
    try:
        return await status == wanted
    except grpc.aio.AioRpcError:
        return False


# ---- availability: NATS stopped -----------------------------------------------------------


async def test_nats_outage_turns_availability_not_serving_and_back(own_nats: EmbeddedNats) -> None:
    feed = Feed(stream=f"T_{uuid.uuid4().hex[:10]}", subject_prefix="outage.event")
    event_id = str(uuid.uuid4())
    nc = await nats.connect(own_nats.url)
    await feed.ensure_stream(nc.jetstream())
    await nc.jetstream().publish(
        feed.subject_for(event_id),
        event_change(event_snapshot(event_id, capacity=10, version=1), 1).SerializeToString(),
    )
    await nc.close()
    settings = AvailabilitySettings(
        nats_url=own_nats.url, feed=feed, port=0, max_feed_lag_s=1.5, security=TEST_SECURITY
    )
    server = await AvailabilityServer(settings, heartbeat_s=0.25).start()
    # A gateway's shared watch, whose "live" drives /healthz and the page's indicator.
    services = client.Services(
        server.address, server.address, security=client.ClientSecurity(token=token_for())
    )
    fanout = AvailabilityFanout(
        services.availability,
        services.availability_health,
        GatewaySettings(watch_retry_min_s=0.1, watch_retry_max_s=0.5),
    )

    async def gateway_live() -> bool:
        return fanout.live

    async def gateway_paused() -> bool:
        return not fanout.live

    try:
        await asyncio.wait_for(server.view.wait_ready(), 10)
        fanout.start()
        async with open_channel(server.address) as channel:
            stub = availability_pb2_grpc.AvailabilityServiceStub(channel)
            await eventually(lambda: _is(health_of(channel), SERVING), 5, "SERVING at start")
            await eventually(gateway_live, 5, "the gateway's feed live at start")
            watch = stub.WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
            )
            assert (await watch.read()).version == 1

            await asyncio.to_thread(own_nats.stop)
            await eventually(
                lambda: _is(health_of(channel), NOT_SERVING), 5, "NOT_SERVING after NATS stopped"
            )
            assert await health_of(channel, LIVENESS) == SERVING
            # Past the max lag the watch ends with a status that sends the client elsewhere.
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(watch.read(), 10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "reconnect" in (raised.value.details() or "")
            await eventually(gateway_paused, 5, "the gateway's feed paused")
            assert "behind the feed" in fanout.message, fanout.message
            refused = stub.WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await refused.read()
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            # Reads still answer from the last known state.
            got = await stub.GetEventAvailability(
                availability_pb2.GetEventAvailabilityRequest(event_id=event_id)
            )
            assert got.version == 1

            await asyncio.to_thread(own_nats.start)
            await eventually(
                lambda: _is(health_of(channel), SERVING), 15, "SERVING after NATS returned"
            )
            assert server.consumer.lag_s() <= settings.max_feed_lag_s
            again = stub.WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
            )
            assert (await asyncio.wait_for(again.read(), 5)).version == 1
            again.cancel()
            await eventually(gateway_live, 10, "the gateway's feed live again")
    finally:
        await fanout.stop()
        await services.close()
        await server.stop(grace=0)


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_page_says_updates_paused_when_not_live() -> None:
    assert NODE is not None
    rules = Path(__file__).resolve().parents[2] / "gateway" / "static" / "rules.js"
    script = (
        f"const r = require({json.dumps(str(rules))});"
        "console.log(JSON.stringify([r.liveLabel(true), r.liveLabel(false)]));"
    )
    out = subprocess.run([NODE, "-e", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["Live", "Updates paused"]


# ---- drain ---------------------------------------------------------------------------------


async def test_drain_lets_calls_in_flight_finish_and_refuses_new_ones(
    stack: DevStack, database_url: str
) -> None:
    async with reservation_on(
        database_url, stack.nats_url, drain_delay_s=1.0, shutdown_grace_s=10
    ) as (
        server,
        channel,
    ):
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("DRAIN", capacity=10))
        # Hold the event's row so that a CreateHold stays in flight until we let go.
        async with await psycopg.AsyncConnection.connect(database_url) as blocker:
            await blocker.execute("BEGIN")
            await blocker.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (event.id,))
            in_flight = asyncio.ensure_future(
                stub.CreateHold(
                    reservation_pb2.CreateHoldRequest(
                        event_id=event.id, quantity=2, customer_ref="in-flight"
                    ),
                    timeout=20,
                )
            )
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            draining = asyncio.create_task(server.drain())
            # NOT_SERVING first, while still answering (the drain delay) ...
            await eventually(lambda: _is(health_of(channel), NOT_SERVING), 3, "NOT_SERVING")
            await asyncio.sleep(1.0)
            # ... then new calls are refused, while the call in flight goes on.
            async with open_channel(f"127.0.0.1:{server.port}") as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await ReservationServiceStub(fresh).GetEvent(
                        reservation_pb2.GetEventRequest(event_id=event.id), timeout=3
                    )
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.5)
            assert not draining.done()  # waiting for the call in flight
            await blocker.execute("ROLLBACK")
        reply = await asyncio.wait_for(in_flight, 10)
        assert reply.reservation.quantity == 2
        await asyncio.wait_for(draining, 10)


# ---- the relay: NATS comes back with an empty store --------------------------------------


async def test_relay_recreates_a_wiped_stream_and_republishes_quiet_events(
    own_nats: EmbeddedNats, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with reservation_on(database_url, own_nats.url) as (server, channel):
        feed = server.settings.feed
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("WIPED", capacity=10))
        await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=2, customer_ref="c")
        )
        current = await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))
        expected = int(current.version)

        async def version_on_feed() -> int:
            nc = await nats.connect(own_nats.url, connect_timeout=1, max_reconnect_attempts=0)
            try:
                msg = await nc.jetstream(timeout=1).get_last_msg(
                    feed.stream, feed.subject_for(event.id)
                )
                return int(changes_pb2.EventChange.FromString(msg.data or b"").event.version)
            except Exception:
                return 0
            finally:
                await nc.close()

        async def caught_up() -> bool:
            return await version_on_feed() == expected

        await eventually(caught_up, 10, "the hold on the feed")
        await asyncio.to_thread(own_nats.stop)
        shutil.rmtree(own_nats.store_dir)  # the broker's disk is lost
        await asyncio.to_thread(own_nats.start)
        # No write happens: the event is quiet, and must come back on the feed by itself.
        took = await eventually(caught_up, 15, "the quiet event back on the recreated stream")
        assert server.relay is not None and server.relay.resyncs >= 1
    assert took < 15
    assert "never retrieved" not in caplog.text
