"""The one mailbox and the one version rule: latest value per key, a wake-up, bounded memory
for a reader that never reads, and "strictly newer wins"."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotlock.conflation import Mailbox, is_newer


def test_the_version_rule_is_strictly_newer() -> None:
    assert is_newer(1, None)  # nothing held yet
    assert is_newer(0, None)
    assert is_newer(6, 5)
    assert not is_newer(5, 5)  # a duplicate is not a change
    assert not is_newer(4, 5)  # a stale message never wins


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=60))
def test_applying_the_rule_keeps_the_highest_version_seen(versions: list[int]) -> None:
    held: int | None = None
    for version in versions:
        if is_newer(version, held):
            held = version
    assert held == (max(versions) if versions else None)


async def test_only_the_latest_value_per_key_waits() -> None:
    mailbox: Mailbox[str, str] = Mailbox()
    for n in range(1000):
        mailbox.offer("a", f"a{n}")
        mailbox.offer("b", f"b{n}")
    assert mailbox.backlog == 2  # bounded by keys, not by offers
    assert await mailbox.next_batch() == ["a999", "b999"]
    assert mailbox.backlog == 0 and mailbox.take() == []


async def test_the_last_offer_wins() -> None:
    mailbox: Mailbox[str, str] = Mailbox()
    mailbox.offer("status", "live")
    mailbox.offer("status", "paused")
    assert mailbox.take() == ["paused"]


async def test_a_waiting_reader_wakes_on_offer() -> None:
    mailbox: Mailbox[str, int] = Mailbox()
    waiting = asyncio.create_task(mailbox.next_batch())
    await asyncio.sleep(0)
    assert not waiting.done()
    mailbox.offer("a", 1)
    assert await asyncio.wait_for(waiting, 1) == [1]


async def test_quiet_for_the_timeout_gives_an_empty_batch() -> None:
    mailbox: Mailbox[str, int] = Mailbox()
    assert await mailbox.next_batch(timeout=0.01) == []
    mailbox.offer("a", 1)
    assert await mailbox.next_batch(timeout=5) == [1]


async def test_close_delivers_what_waits_then_ends() -> None:
    mailbox: Mailbox[str, int] = Mailbox()
    mailbox.offer("a", 1)
    mailbox.close()
    assert mailbox.closed
    assert await mailbox.next_batch() == [1]
    assert await asyncio.wait_for(mailbox.next_batch(), 1) == []


async def test_close_wakes_a_waiting_reader() -> None:
    mailbox: Mailbox[str, int] = Mailbox()
    waiting = asyncio.create_task(mailbox.next_batch())
    await asyncio.sleep(0)
    mailbox.close()
    assert await asyncio.wait_for(waiting, 1) == []


@pytest.mark.parametrize("timeout", [None, 0.01])
async def test_a_never_reading_reader_costs_the_writer_nothing(timeout: float | None) -> None:
    idle: Mailbox[int, int] = Mailbox()
    fast: Mailbox[int, int] = Mailbox()
    received: list[int] = []

    async def read() -> None:
        while not received or received[-1] < 200:
            received.extend(await fast.next_batch(timeout))

    reader = asyncio.create_task(read())
    for n in range(1, 201):
        idle.offer(0, n)
        fast.offer(0, n)
        await asyncio.sleep(0)
    await asyncio.wait_for(reader, 1)
    assert idle.backlog == 1
    assert received[-1] == 200 and received == sorted(received)


async def test_pop_takes_one_slot_alone() -> None:
    mailbox: Mailbox[str, str] = Mailbox()
    mailbox.offer("a", "a1")
    mailbox.offer("status", "live")
    assert mailbox.pop("status") == "live"
    assert mailbox.pop("status") is None
    assert mailbox.take() == ["a1"]


async def test_a_reader_cancelled_while_waiting_leaves_the_mailbox_usable() -> None:
    mailbox: Mailbox[str, int] = Mailbox()
    waiting = asyncio.create_task(mailbox.next_batch())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    mailbox.offer("a", 1)  # wakes nobody, raises nothing
    again = asyncio.create_task(mailbox.next_batch())
    assert await asyncio.wait_for(again, 1) == [1]
    waiting_again = asyncio.create_task(mailbox.next_batch())
    await asyncio.sleep(0)
    mailbox.offer("a", 2)
    assert await asyncio.wait_for(waiting_again, 1) == [2]
