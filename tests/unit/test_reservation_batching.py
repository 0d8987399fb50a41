"""Group commit (HoldBatcher) on the in-memory store: concurrent holds on one event share one
store call, a caller that gave up takes no seats, and a failed batch fails each of its callers."""

from __future__ import annotations

import asyncio
import time as clock
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any

import pytest

from reservation_service import errors, holds
from reservation_service.batching import HoldBatcher, SettleBatcher, SettleOutcome, SettleRequest
from reservation_service.errors import DatabaseFailed, DatabaseUnavailable
from reservation_service.holds import (
    Change,
    Event,
    EventSpec,
    HoldOutcome,
    HoldPolicy,
    HoldRequest,
    Money,
    Reservation,
    TicketType,
)
from reservation_service.store import Settle
from slotlock.errors import SlotlockError
from tests.unit.fake_store import FakeStore

POLICY = HoldPolicy(ttl=timedelta(minutes=5), max_seats_per_hold=10)


async def new_event(store: FakeStore, capacity: int = 100) -> Event:
    spec = EventSpec(
        code="DS-1",
        experience_title="Dinner",
        local_date=date(2026, 12, 24),
        local_start_time=time(19, 0),
        time_zone="Asia/Ho_Chi_Minh",
        capacity=capacity,
        status=None,
        experience_only_enabled=False,
        dinner_price=Money(1, "VND"),
        experience_only_price=Money(1, "VND"),
    )
    return await store.upsert_event(spec)


def batcher_on(store: FakeStore, max_batch: int = 256) -> HoldBatcher:
    async def place_batch(requests: Sequence[HoldRequest]) -> list[HoldOutcome]:
        return await store.create_holds(requests, POLICY)

    return HoldBatcher(place_batch, max_batch=max_batch)


async def let_tasks_run() -> None:
    """A few turns of the loop: enough for queued tasks to reach their next await."""
    for _ in range(10):
        await asyncio.sleep(0)


def request(event: Event, quantity: int = 1, ref: str = "c") -> HoldRequest:
    return HoldRequest(event.id, quantity, TicketType.DINNER, ref, None)


async def test_concurrent_holds_share_one_store_call() -> None:
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    outcomes = await asyncio.gather(
        *(batcher.place(request(event, ref=f"c{n}")) for n in range(20))
    )
    assert len(store.batches) == 1 and len(store.batches[0]) == 20
    assert all(isinstance(o, Reservation) for o in outcomes)
    # Each caller gets its own outcome, in the order it asked.
    assert [o.customer_ref for o in outcomes if isinstance(o, Reservation)] == [
        f"c{n}" for n in range(20)
    ]
    assert store.paid_and_pending(event.id) == (0, 20)


async def test_holds_queued_behind_a_running_batch_form_the_next_one() -> None:
    store = FakeStore()
    event = await new_event(store)
    store.gate = asyncio.Event()
    batcher = batcher_on(store, max_batch=4)
    first = asyncio.create_task(batcher.place(request(event)))
    await let_tasks_run()  # the first batch starts and waits at the gate
    assert [len(b) for b in store.batches] == [1]
    queued = [asyncio.create_task(batcher.place(request(event))) for _ in range(6)]
    await let_tasks_run()
    store.gate.set()
    await asyncio.gather(first, *queued)
    assert [len(b) for b in store.batches] == [1, 4, 2]  # max_batch caps a batch


async def test_each_caller_hears_its_own_refusal() -> None:
    store = FakeStore()
    event = await new_event(store, capacity=3)
    batcher = batcher_on(store)
    outcomes = await asyncio.gather(*(batcher.place(request(event, 2)) for _ in range(3)))
    assert isinstance(outcomes[0], Reservation)
    assert all(isinstance(o, errors.NotEnoughSeats) for o in outcomes[1:])
    assert store.paid_and_pending(event.id) == (0, 2)


async def test_a_caller_that_gave_up_takes_no_seats() -> None:
    store = FakeStore()
    event = await new_event(store)
    store.gate = asyncio.Event()
    batcher = batcher_on(store)
    first = asyncio.create_task(batcher.place(request(event, 1)))
    await let_tasks_run()
    gave_up = asyncio.create_task(batcher.place(request(event, 5)))
    await let_tasks_run()
    gave_up.cancel()  # its deadline passed while it queued
    store.gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    await let_tasks_run()
    assert [len(b) for b in store.batches] == [1]
    assert store.paid_and_pending(event.id) == (0, 1)


async def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_runs() -> None:
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    store.fail_next("create_holds", DatabaseUnavailable("test"))
    outcomes = await asyncio.gather(
        *(batcher.place(request(event)) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, DatabaseUnavailable) for o in outcomes)
    assert store.paid_and_pending(event.id) == (0, 0)
    assert isinstance(await batcher.place(request(event)), Reservation)


async def test_closing_tells_queued_callers() -> None:
    store = FakeStore()
    event = await new_event(store)
    store.gate = asyncio.Event()
    batcher = batcher_on(store)
    waiting = [asyncio.create_task(batcher.place(request(event))) for _ in range(3)]
    await let_tasks_run()
    await batcher.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def test_a_poisoned_request_fails_alone_and_the_rest_of_its_batch_is_placed() -> None:
    """A request that fails the whole transaction (here a NUL Postgres refuses, below the edge
    that normally refuses it) is found by splitting the batch: it alone hears the failure."""
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    requests = [request(event, ref=f"c{n}") for n in range(30)]
    requests.insert(13, request(event, 2, ref="bad\x00"))
    outcomes = await asyncio.gather(*(batcher.place(r) for r in requests), return_exceptions=True)
    assert isinstance(outcomes.pop(13), DatabaseFailed)
    assert [o.customer_ref for o in outcomes if isinstance(o, Reservation)] == [
        f"c{n}" for n in range(30)
    ]  # every valid hold placed, in the order asked
    assert store.paid_and_pending(event.id) == (0, 30)
    assert len(store.batches) <= 1 + 2 * 5  # bisection: a few store calls, not one per request


async def test_an_outage_fails_the_batch_without_splitting_it() -> None:
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    store.fail_next("create_holds", DatabaseUnavailable("test"))
    outcomes = await asyncio.gather(
        *(batcher.place(request(event)) for _ in range(8)), return_exceptions=True
    )
    assert all(isinstance(o, DatabaseUnavailable) for o in outcomes)
    assert len(store.batches) == 1  # not tied to one request: splitting would only add load


async def test_a_caller_whose_deadline_passed_while_its_batch_waited_takes_no_seats() -> None:
    store = FakeStore()
    event = await new_event(store)
    store.gate = asyncio.Event()
    batcher = batcher_on(store)
    patient = asyncio.create_task(batcher.place(request(event, 1)))
    hurried = replace(request(event, 5), deadline=clock.monotonic() + 0.05)
    late = asyncio.create_task(batcher.place(hurried))
    queued = replace(request(event, 3), deadline=clock.monotonic() - 1)  # passed already
    await let_tasks_run()
    assert [len(b) for b in store.batches] == [2]  # both wait at the gate in one batch
    behind = asyncio.create_task(batcher.place(queued))
    await asyncio.sleep(0.1)
    store.gate.set()
    assert isinstance(await patient, Reservation)
    assert isinstance(await late, errors.DeadlinePassed)
    assert isinstance(await behind, errors.DeadlinePassed)
    assert store.paid_and_pending(event.id) == (0, 1)


async def new_events(store: FakeStore, count: int, capacity: int = 100) -> list[Event]:
    events = []
    for n in range(count):
        spec = EventSpec(
            code=f"DS-{n}",
            experience_title="Dinner",
            local_date=date(2026, 12, 24),
            local_start_time=time(19, 0),
            time_zone="Asia/Ho_Chi_Minh",
            capacity=capacity,
            status=None,
            experience_only_enabled=False,
            dinner_price=Money(1, "VND"),
            experience_only_price=Money(1, "VND"),
        )
        events.append(await store.upsert_event(spec))
    return events


async def test_holds_on_different_events_share_one_store_call() -> None:
    store = FakeStore()
    events = await new_events(store, 5)
    batcher = batcher_on(store)
    outcomes = await asyncio.gather(
        *(batcher.place(request(events[n % 5], ref=f"c{n}")) for n in range(20))
    )
    assert [len(b) for b in store.batches] == [20]
    assert all(isinstance(o, Reservation) for o in outcomes)
    for event in events:
        assert store.paid_and_pending(event.id) == (0, 4)


async def test_a_missing_event_refuses_only_its_own_requests() -> None:
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    ghost = replace(request(event), event_id="00000000-0000-4000-8000-000000000000")
    outcomes = await asyncio.gather(
        batcher.place(request(event)), batcher.place(ghost), batcher.place(request(event))
    )
    assert isinstance(outcomes[1], errors.EventNotFound)
    assert isinstance(outcomes[0], Reservation) and isinstance(outcomes[2], Reservation)
    assert len(store.batches) == 1


def settler_on(store: FakeStore) -> SettleBatcher:
    async def settle_batch(batch: Sequence[SettleRequest]) -> list[SettleOutcome]:
        return await store.settle_holds([(r.reservation_id, r.settle, r.actor) for r in batch])

    return SettleBatcher(settle_batch)


def confirm(reference: str) -> Settle:
    def settle(
        event: Event, reservation: Reservation, now: datetime
    ) -> tuple[Event, Reservation, Change] | None:
        return holds.confirm_hold(event, reservation, reference, now)

    return settle


def release(event: Event, reservation: Reservation, now: datetime) -> Any:
    return holds.release_hold(event, reservation, now)


async def test_confirms_and_releases_share_one_store_call_each_with_its_own_outcome() -> None:
    store = FakeStore()
    events = await new_events(store, 2)
    placed = await batcher_on(store).place(request(events[0], 2))
    others = [await batcher_on(store).place(request(events[n % 2])) for n in range(6)]
    assert isinstance(placed, Reservation)
    settler = settler_on(store)
    items = [SettleRequest(placed.id, confirm("pay-1"))]
    items += [SettleRequest(o.id, release) for o in others if isinstance(o, Reservation)]
    items.append(SettleRequest("00000000-0000-4000-8000-000000000000", release))
    items.append(SettleRequest(placed.id, release))  # after its confirm: refused, alone
    outcomes = await asyncio.gather(*(settler.place(item) for item in items))
    assert len(store.settle_batches) == 1 and len(store.settle_batches[0]) == len(items)
    assert isinstance(outcomes[0], Reservation) and outcomes[0].status.value == "PAID"
    assert all(isinstance(o, Reservation) and o.status.value == "CANCELLED" for o in outcomes[1:7])
    assert isinstance(outcomes[7], errors.ReservationNotFound)
    assert isinstance(outcomes[8], SlotlockError)
    assert store.paid_and_pending(events[0].id) == (2, 0)
    assert store.paid_and_pending(events[1].id) == (0, 0)


async def test_a_confirm_that_fails_its_transaction_fails_alone() -> None:
    store = FakeStore()
    event = await new_event(store)
    batcher = batcher_on(store)
    placed = [await batcher.place(request(event)) for _ in range(9)]
    ids = [p.id for p in placed if isinstance(p, Reservation)]

    def broken(event: Event, reservation: Reservation, now: datetime) -> Any:
        raise RuntimeError("a bug on odd input")

    settler = settler_on(store)
    items = [SettleRequest(i, confirm(f"pay-{n}")) for n, i in enumerate(ids)]
    items.insert(4, SettleRequest(ids[0], broken))
    outcomes = await asyncio.gather(*(settler.place(i) for i in items), return_exceptions=True)
    assert isinstance(outcomes.pop(4), RuntimeError)
    assert all(isinstance(o, Reservation) and o.status.value == "PAID" for o in outcomes)
    assert store.paid_and_pending(event.id) == (9, 0)
