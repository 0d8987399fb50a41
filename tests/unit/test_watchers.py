"""The watcher hub: conflation to the latest state per event, bounded memory for a reader that
never reads, routing by event, the cap, and clean-up."""

from __future__ import annotations

import asyncio

import pytest

from availability_service.watchers import TooManyWatchers, Update, WatcherHub
from slotlock import errors


def update(event_id: str, version: int) -> Update[str]:
    return Update(event_id, version, f"{event_id}@{version}")


async def test_slow_watcher_gets_only_the_latest_per_event() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    watcher = hub.register(None)
    for version in range(1, 1001):
        hub.publish(update("a", version))
        hub.publish(update("b", version))
    assert watcher.backlog == 2  # bounded by the number of events, not of updates
    batch = await watcher.next_batch()
    assert [u.message for u in batch] == ["a@1000", "b@1000"]
    assert watcher.backlog == 0


async def test_same_object_goes_to_every_watcher() -> None:
    hub: WatcherHub[object] = WatcherHub(max_watchers=10)
    watchers = [hub.register(None) for _ in range(3)] + [hub.register(["x"])]
    message = object()
    hub.publish(Update("x", 1, message))
    for watcher in watchers:
        (got,) = await watcher.next_batch()
        assert got.message is message


async def test_versions_never_go_backwards_in_a_slot() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    watcher = hub.register(["a"], initial=[update("a", 5)])
    hub.publish(update("a", 4))
    hub.publish(update("a", 5))
    assert [u.version for u in await watcher.next_batch()] == [5]


async def test_a_stale_update_never_follows_a_newer_one_already_taken() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    watcher = hub.register(None)
    assert hub.publish(update("a", 3))
    assert [u.version for u in await watcher.next_batch()] == [3]
    assert not hub.publish(update("a", 2))  # a re-delivery from before a resync
    assert not hub.publish(update("a", 3))
    assert watcher.backlog == 0
    assert hub.publish(update("a", 4))
    assert [u.version for u in await watcher.next_batch()] == [4]


async def test_routing_by_event_id() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    only_a = hub.register(["a"])
    every = hub.register(None)
    hub.publish(update("b", 1))
    assert only_a.backlog == 0 and every.backlog == 1
    hub.publish(update("a", 1))
    assert only_a.backlog == 1


async def test_a_waiting_watcher_wakes_up_on_publish() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    watcher = hub.register(None)
    waiting = asyncio.create_task(watcher.next_batch())
    await asyncio.sleep(0)
    assert not waiting.done()
    hub.publish(update("a", 1))
    batch = await asyncio.wait_for(waiting, 1)
    assert [u.message for u in batch] == ["a@1"]


async def test_never_reading_watcher_does_not_hold_the_publisher() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=10)
    hub.register(None)  # never reads
    fast = hub.register(None)
    received: list[int] = []

    async def read() -> None:
        while len(received) < 1 or received[-1] < 200:
            received.extend(u.version for u in await fast.next_batch())

    reader = asyncio.create_task(read())
    for version in range(1, 201):
        hub.publish(update("a", version))
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 1)
    assert received[-1] == 200 and received == sorted(received)


async def test_cap_and_cleanup() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=2)
    first = hub.register(None)
    second = hub.register(["a", "b"])
    with pytest.raises(TooManyWatchers) as raised:
        hub.register(None)
    assert isinstance(raised.value, errors.ResourceExhausted)
    hub.unregister(second)
    hub.unregister(second)  # idempotent
    assert len(hub) == 1
    assert hub._by_event == {}
    third = hub.register(["a"])
    hub.unregister(first)
    hub.unregister(third)
    assert len(hub) == 0 and not hub._all and not hub._by_event


async def test_closed_watcher_stops_waiting() -> None:
    hub: WatcherHub[str] = WatcherHub(max_watchers=2)
    watcher = hub.register(None)
    waiting = asyncio.create_task(watcher.next_batch())
    await asyncio.sleep(0)
    hub.close_all()
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(waiting, 1)
