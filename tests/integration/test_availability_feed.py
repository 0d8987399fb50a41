"""The availability service in-process against real NATS: rebuild from the last message per
subject, live updates, stale versions ignored, readiness, conflation for slow watchers, error
codes, and convergence after the broker restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import nats.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings
from slotlock.feed import Feed
from slotlock.v1 import availability_pb2, availability_pb2_grpc, catalog_pb2, changes_pb2
from slotlock_cli.devstack import DevStack, EmbeddedNats
from tests.support import TEST_SECURITY, open_channel

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "slotlock.v1.AvailabilityService"


class Relay:
    """Publishes EventChange messages the way the reservation service's outbox relay does."""

    def __init__(self, nc: Any, feed: Feed) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.feed = feed
        self.change_id = 0
        self.relay_id = uuid.uuid4().hex

    async def wait_connected(self, within: float = 10.0) -> None:
        """After a broker restart: until this client is back and JetStream answers."""
        deadline = time.monotonic() + within
        while True:
            try:
                if self.nc.is_connected:
                    await self.nc.jetstream(timeout=0.5).stream_info(self.feed.stream)
                    return
            except nats.errors.Error:
                pass
            assert time.monotonic() < deadline, "the relay never reconnected"
            await asyncio.sleep(0.05)

    async def publish(
        self,
        event_id: str,
        version: int,
        *,
        capacity: int = 40,
        paid: int = 0,
        pending: int = 0,
        local_date: str = "2026-12-24",
        status: int = catalog_pb2.EVENT_STATUS_SCHEDULED,
        code: str | None = None,
    ) -> None:
        self.change_id += 1
        change = changes_pb2.EventChange(
            change_id=self.change_id,
            type=changes_pb2.CHANGE_TYPE_HOLD_CREATED,
            event=catalog_pb2.Event(
                id=event_id,
                code=code or f"DS-{event_id[:8]}",
                experience_title="Dinner in the dark",
                local_date=local_date,
                local_start_time="19:00",
                time_zone="Asia/Ho_Chi_Minh",
                capacity=capacity,
                paid=paid,
                pending=pending,
                available=max(0, capacity - paid - pending),
                status=status,  # type: ignore[arg-type]
                dinner_price=catalog_pb2.Money(amount=1_500_000, currency="VND"),
                version=version,
            ),
        )
        await self.js.publish(
            self.feed.subject_for(event_id),
            change.SerializeToString(),
            # Unique per change, as the outbox id is (a new Relay must not be deduplicated).
            headers={"Nats-Msg-Id": f"{self.relay_id}-{self.change_id}"},
        )


@contextlib.asynccontextmanager
async def relay_on(nats_url: str, feed: Feed) -> AsyncIterator[Relay]:
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await feed.ensure_stream(nc.jetstream())
        yield Relay(nc, feed)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def service(
    nats_url: str, feed: Feed, *, max_watchers: int = 100, wait: bool = True
) -> AsyncIterator[tuple[AvailabilityServer, Any]]:
    settings = Settings(
        nats_url=nats_url, feed=feed, port=0, max_watchers=max_watchers, security=TEST_SECURITY
    )
    server = await AvailabilityServer(settings, heartbeat_s=0.5).start()
    try:
        if wait:
            await asyncio.wait_for(server.view.wait_ready(), 10)
        async with open_channel(server.address) as channel:
            yield server, channel
    finally:
        await server.stop(grace=0.5)


def stub(channel: Any) -> availability_pb2_grpc.AvailabilityServiceStub:
    return availability_pb2_grpc.AvailabilityServiceStub(channel)


def new_id() -> str:
    return str(uuid.uuid4())


async def health_of(channel: Any, name: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=2
    )
    status: int = reply.status
    return status


async def read_until(call: Any, predicate: Any, within: float = 5.0) -> list[Any]:
    """Messages from a watch stream up to and including the first one matching ``predicate``."""
    got: list[Any] = []

    async def run() -> None:
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF
            got.append(message)
            if predicate(message):
                return

    await asyncio.wait_for(run(), within)
    return got


async def test_rebuild_keeps_the_last_state_of_each_event(stack: DevStack, feed: Feed) -> None:
    events = [new_id() for _ in range(20)]
    async with relay_on(stack.nats_url, feed) as relay:
        for version in (1, 2, 3):
            for number, event_id in enumerate(events):
                await relay.publish(event_id, version, pending=version + number % 3)
        async with service(stack.nats_url, feed) as (server, channel):
            assert await health_of(channel) == SERVING
            assert await health_of(channel, SERVICE) == SERVING
            # Last per subject: one message per event, not the whole history.
            assert server.view.applied == len(events)
            for number, event_id in enumerate(events):
                got = await stub(channel).GetEventAvailability(
                    availability_pb2.GetEventAvailabilityRequest(event_id=event_id)
                )
                assert (got.version, got.pending) == (3, 3 + number % 3)
                assert got.available == 40 - got.pending
                assert got.badge == availability_pb2.BADGE_AVAILABLE
                assert got.dinner_price.amount == 1_500_000


async def test_empty_stream_is_ready_at_once(stack: DevStack, feed: Feed) -> None:
    started = time.monotonic()
    async with service(stack.nats_url, feed) as (server, channel):
        assert await health_of(channel) == SERVING
        assert time.monotonic() - started < 5
        listed = await stub(channel).ListAvailability(availability_pb2.ListAvailabilityRequest())
        assert list(listed.events) == [] and listed.next_page_token == ""
        assert server.view.views == {}

        # Reflection lists the service, so grpcurl and friends can call it without the protos.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [
            service.name
            async for reply in replies
            for service in reply.list_services_response.service
        ]
        assert SERVICE in names and "grpc.health.v1.Health" in names


async def test_live_updates_skip_stale_versions(stack: DevStack, feed: Feed) -> None:
    event_id = new_id()
    async with relay_on(stack.nats_url, feed) as relay:
        await relay.publish(event_id, 1, capacity=10)
        async with service(stack.nats_url, feed) as (_, channel):
            call = stub(channel).WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
            )
            first = await read_until(call, lambda m: True)
            assert first[0].version == 1 and first[0].badge == availability_pb2.BADGE_AVAILABLE

            published = time.monotonic()
            await relay.publish(event_id, 2, capacity=10, pending=5)
            (second,) = await read_until(call, lambda m: True)
            assert time.monotonic() - published < 1.0
            assert (second.version, second.pending, second.available) == (2, 5, 5)
            assert second.badge == availability_pb2.BADGE_ALMOST_FULL

            await relay.publish(event_id, 1, capacity=10)  # stale: must never be seen
            await relay.publish(event_id, 2, capacity=10, pending=9)  # duplicate version
            await relay.publish(event_id, 3, capacity=10, paid=10)
            rest = await read_until(call, lambda m: m.version == 3)
            assert [m.version for m in rest] == [3]
            assert rest[0].badge == availability_pb2.BADGE_SOLD_OUT
            call.cancel()


async def test_watch_all_and_known_versions(stack: DevStack, feed: Feed) -> None:
    a, b, c = new_id(), new_id(), new_id()
    async with relay_on(stack.nats_url, feed) as relay:
        for event_id in (a, b, c):
            await relay.publish(event_id, 4)
        async with service(stack.nats_url, feed) as (_, channel):
            call = stub(channel).WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(known_versions={a: 4, b: 3})
            )
            await relay.publish(new_id(), 1)  # a new event reaches an "every event" watcher
            got = await read_until(call, lambda m: m.version == 1)
            assert {m.event_id for m in got if m.version == 4} == {b, c}
            call.cancel()


async def test_bad_requests_get_clear_codes(stack: DevStack, feed: Feed) -> None:
    async with service(stack.nats_url, feed, max_watchers=1) as (_, channel):
        api = stub(channel)
        cases: list[tuple[Any, grpc.StatusCode]] = [
            (
                api.GetEventAvailability(availability_pb2.GetEventAvailabilityRequest()),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                api.GetEventAvailability(
                    availability_pb2.GetEventAvailabilityRequest(event_id="nope")
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                api.GetEventAvailability(
                    availability_pb2.GetEventAvailabilityRequest(event_id=new_id())
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]
        bad_lists = [
            availability_pb2.ListAvailabilityRequest(from_date="24/12/2026"),
            availability_pb2.ListAvailabilityRequest(from_date="2026-02-30"),
            availability_pb2.ListAvailabilityRequest(from_date="2026-12-25", to_date="2026-12-24"),
            availability_pb2.ListAvailabilityRequest(page_size=-1),
            availability_pb2.ListAvailabilityRequest(page_token="garbage!"),
            availability_pb2.ListAvailabilityRequest(status=99),  # type: ignore[arg-type]
            availability_pb2.ListAvailabilityRequest(badge=42),  # type: ignore[arg-type]
        ]
        cases += [
            (api.ListAvailability(request), grpc.StatusCode.INVALID_ARGUMENT)
            for request in bad_lists
        ]
        for call, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == code, raised.value.details()
            assert raised.value.details()

        for request, code in [
            (
                availability_pb2.WatchAvailabilityRequest(event_ids=["x"]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                availability_pb2.WatchAvailabilityRequest(event_ids=[new_id()]),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.WatchAvailability(request).read()
            assert raised.value.code() == code

        # The watcher cap (1 here) answers RESOURCE_EXHAUSTED, and frees up when a watcher leaves.
        holder = api.WatchAvailability(availability_pb2.WatchAvailabilityRequest())
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.WatchAvailability(availability_pb2.WatchAvailabilityRequest()).read()
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many watchers" in (raised.value.details() or "")
        holder.cancel()
        await asyncio.sleep(0.2)
        again = api.WatchAvailability(availability_pb2.WatchAvailabilityRequest())
        await asyncio.sleep(0.2)
        assert again.done() is False
        again.cancel()


async def test_list_filters_and_pages(stack: DevStack, feed: Feed) -> None:
    async with relay_on(stack.nats_url, feed) as relay:
        for day in range(1, 8):
            await relay.publish(
                new_id(), 1, local_date=f"2026-12-0{day}", paid=38 if day % 2 else 0
            )
        await relay.publish(
            new_id(), 1, local_date="2026-12-03", status=catalog_pb2.EVENT_STATUS_CANCELLED
        )
        async with service(stack.nats_url, feed) as (_, channel):
            api = stub(channel)
            seen: list[str] = []
            token = ""
            while True:
                page = await api.ListAvailability(
                    availability_pb2.ListAvailabilityRequest(
                        from_date="2026-12-02", to_date="2026-12-06", page_size=2, page_token=token
                    )
                )
                assert len(page.events) <= 2
                seen += [event.local_date for event in page.events]
                token = page.next_page_token
                if not token:
                    break
            assert seen == sorted(seen) and len(seen) == 6
            assert set(seen) == {f"2026-12-0{day}" for day in range(2, 7)}

            few = await api.ListAvailability(
                availability_pb2.ListAvailabilityRequest(badge=availability_pb2.BADGE_FEW_LEFT)
            )
            assert sorted(e.local_date[-1] for e in few.events) == ["1", "3", "5", "7"]
            cancelled = await api.ListAvailability(
                availability_pb2.ListAvailabilityRequest(status=catalog_pb2.EVENT_STATUS_CANCELLED)
            )
            assert [e.status for e in cancelled.events] == [catalog_pb2.EVENT_STATUS_CANCELLED]

            # A token only fits the filters it was issued for.
            first = await api.ListAvailability(
                availability_pb2.ListAvailabilityRequest(page_size=1)
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.ListAvailability(
                    availability_pb2.ListAvailabilityRequest(
                        page_token=first.next_page_token, from_date="2026-12-01"
                    )
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_slow_watcher_does_not_hold_up_a_fast_one(stack: DevStack, feed: Feed) -> None:
    events = [new_id() for _ in range(50)]
    rounds = 60
    async with relay_on(stack.nats_url, feed) as relay:
        for event_id in events:
            await relay.publish(event_id, 1, capacity=1000)
        async with service(stack.nats_url, feed) as (server, channel):
            api = stub(channel)
            # Its own connection so that its unread stream fills only its own HTTP/2 windows.
            async with open_channel(server.address) as slow_channel:
                slow = stub(slow_channel).WatchAvailability(
                    availability_pb2.WatchAvailabilityRequest()
                )
                await slow.wait_for_connection()
                fast = api.WatchAvailability(availability_pb2.WatchAvailabilityRequest())
                latest: dict[str, int] = {}

                async def read_fast() -> None:
                    while len(latest) < len(events) or min(latest.values()) < rounds:
                        message = await fast.read()
                        assert message.version >= latest.get(message.event_id, 0)
                        latest[message.event_id] = message.version

                reader = asyncio.create_task(read_fast())
                started = time.monotonic()
                publishes = [
                    relay.publish(event_id, version, capacity=1000, pending=version)
                    for version in range(2, rounds + 1)
                    for event_id in events
                ]
                for batch in range(0, len(publishes), 200):
                    await asyncio.gather(*publishes[batch : batch + 200])
                await asyncio.wait_for(reader, 10)
                assert time.monotonic() - started < 10
                assert all(version == rounds for version in latest.values())

                # The slow one, when it finally reads, gets each event's newest state with its
                # versions never going backwards, and the service held at most one slot per event.
                assert max(w.backlog for w in server.view.hub._all) <= len(events)
                slow_latest: dict[str, int] = {}

                async def read_slow() -> None:
                    while len(slow_latest) < len(events) or min(slow_latest.values()) < rounds:
                        message = await slow.read()
                        assert message.version >= slow_latest.get(message.event_id, 0)
                        slow_latest[message.event_id] = message.version

                await asyncio.wait_for(read_slow(), 10)
                slow.cancel()
                fast.cancel()
            await asyncio.sleep(0.2)
            assert len(server.view.hub) == 0  # cancelled streams are unregistered at once


async def test_not_serving_until_rebuilt_and_converges_after_nats_restart(
    own_nats: EmbeddedNats, feed: Feed
) -> None:
    event_id = new_id()
    async with relay_on(own_nats.url, feed) as relay:
        await relay.publish(event_id, 1)
    own_nats.stop()
    async with service(own_nats.url, feed, wait=False) as (server, channel):
        # No broker: the service answers, but is not SERVING and says why.
        assert await health_of(channel) == NOT_SERVING
        assert await health_of(channel, SERVICE) == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub(channel).GetEventAvailability(
                availability_pb2.GetEventAvailabilityRequest(event_id=event_id)
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

        own_nats.start()
        await asyncio.wait_for(server.view.wait_ready(), 10)
        assert await health_of(channel) == SERVING
        call = stub(channel).WatchAvailability(
            availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
        )
        assert (await read_until(call, lambda m: True))[0].version == 1

        async with relay_on(own_nats.url, feed) as relay:
            await relay.publish(event_id, 2, pending=2)
            await read_until(call, lambda m: m.version == 2)
            syncs = server.consumer.syncs

            own_nats.stop()
            own_nats.start()
            await relay.wait_connected()
            # Changes published right after the restart reach the watcher, whether through the
            # tail or the resync from the last message per subject.
            await relay.publish(event_id, 3, pending=3)
            await relay.publish(event_id, 4, paid=4)
            got = await read_until(call, lambda m: m.version == 4, within=15)
            assert [m.version for m in got] == sorted(m.version for m in got)
            assert got[-1].paid == 4 and server.consumer.syncs > syncs
            assert server.view.views[event_id].version == 4
        call.cancel()


async def test_resyncs_when_the_stream_is_recreated(stack: DevStack, feed: Feed) -> None:
    """JetStream can lose acknowledged writes; a recreated stream (and its fresh sequence
    numbers) must still converge: missing heartbeats trigger a resync from last-per-subject."""
    event_id = new_id()
    async with relay_on(stack.nats_url, feed) as relay:
        await relay.publish(event_id, 1)
        async with service(stack.nats_url, feed) as (server, channel):
            await relay.js.delete_stream(feed.stream)
            await feed.ensure_stream(relay.js)
            await relay.publish(event_id, 7, paid=7)
            deadline = time.monotonic() + 10
            while server.view.views[event_id].version != 7:
                assert time.monotonic() < deadline, "the view never converged"
                await asyncio.sleep(0.05)
            got = await stub(channel).GetEventAvailability(
                availability_pb2.GetEventAvailabilityRequest(event_id=event_id)
            )
            assert (got.version, got.paid) == (7, 7)
