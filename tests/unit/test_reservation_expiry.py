"""The expirer on the in-memory store, with a fake clock and a fake sleep: it sleeps until the
earliest deadline, wakes early for a nearer one, and keeps running after a failed pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import pytest

from reservation_service.expiry import Expirer, ExpiryStore
from reservation_service.holds import (
    EventSpec,
    ExpiryPass,
    HoldPolicy,
    HoldRequest,
    Money,
    TicketType,
)
from tests.unit.fake_store import START, FakeStore

RECHECK_S = 60.0


@dataclass
class Sleeper:
    """Stands in for the expirer's sleep: records each nap and returns when the expirer is woken
    or when the test says the time has passed (``ring``)."""

    naps: list[float] = field(default_factory=list)
    new_nap: asyncio.Event = field(default_factory=asyncio.Event)
    alarm: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, wake: asyncio.Event, timeout: float) -> None:
        self.naps.append(timeout)
        self.new_nap.set()
        waits = [asyncio.create_task(wake.wait()), asyncio.create_task(self.alarm.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            self.alarm.clear()

    async def next_nap(self) -> float:
        """The length of the expirer's next sleep, once it has fallen asleep."""
        await asyncio.wait_for(self.new_nap.wait(), timeout=1.0)
        self.new_nap.clear()
        return self.naps[-1]

    def ring(self) -> None:
        self.alarm.set()


@dataclass
class Running:
    store: FakeStore
    expirer: Expirer
    sleeper: Sleeper


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    store = FakeStore()
    sleeper = Sleeper()
    expirer = Expirer(
        store, recheck_s=RECHECK_S, clock=lambda: store.now.timestamp(), sleep=sleeper
    )
    task = asyncio.create_task(expirer.run())
    yield Running(store, expirer, sleeper)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def place(store: FakeStore, ttl_s: float) -> None:
    if not store.events:
        await store.upsert_event(
            EventSpec(
                code="DS-1",
                experience_title="Dinner",
                local_date=date(2026, 12, 24),
                local_start_time=time(19, 0),
                time_zone="Asia/Ho_Chi_Minh",
                capacity=100,
                status=None,
                experience_only_enabled=False,
                dinner_price=Money(1, "VND"),
                experience_only_price=Money(1, "VND"),
            )
        )
    event_id = next(iter(store.events))
    policy = HoldPolicy(ttl=timedelta(seconds=ttl_s))
    request = HoldRequest(event_id, 1, TicketType.DINNER, "c", None)
    await store.create_holds([request], policy)


async def test_sleeps_until_the_earliest_deadline(running: Running) -> None:
    assert await running.sleeper.next_nap() == pytest.approx(RECHECK_S, abs=0.01)  # nothing due
    await place(running.store, ttl_s=5)
    await place(running.store, ttl_s=9)
    running.sleeper.ring()
    assert await running.sleeper.next_nap() == pytest.approx(5.0, abs=0.01)
    running.store.now = START + timedelta(seconds=5)
    running.sleeper.ring()
    assert await running.sleeper.next_nap() == pytest.approx(4.0, abs=0.01)
    assert [r.status.value for r in running.store.reservations.values()] == [
        "EXPIRED",
        "PENDING",
    ]


async def test_a_nearer_deadline_wakes_it_early_and_a_later_one_does_not(
    running: Running,
) -> None:
    await running.sleeper.next_nap()
    await place(running.store, ttl_s=30)
    running.sleeper.ring()
    assert await running.sleeper.next_nap() == pytest.approx(30.0, abs=0.01)
    passes = running.store.calls["expire_due_holds"]
    running.expirer.notice_expiry(START + timedelta(seconds=40))
    await asyncio.sleep(0.005)
    assert running.store.calls["expire_due_holds"] == passes  # still asleep
    await place(running.store, ttl_s=3)
    running.expirer.notice_expiry(START + timedelta(seconds=3))
    assert await running.sleeper.next_nap() == pytest.approx(3.0, abs=0.01)
    assert running.store.calls["expire_due_holds"] == passes + 1


async def test_keeps_running_after_a_failed_pass(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await running.sleeper.next_nap()
    await place(running.store, ttl_s=2)
    running.store.fail_next("expire_due_holds", RuntimeError("a bug"))
    running.sleeper.ring()
    assert await running.sleeper.next_nap() == pytest.approx(1.0, abs=0.01)  # retry soon
    assert "pass failed" in caplog.text
    running.store.now = START + timedelta(seconds=2)
    running.sleeper.ring()
    assert await running.sleeper.next_nap() == pytest.approx(RECHECK_S, abs=0.01)
    assert [r.status.value for r in running.store.reservations.values()] == ["EXPIRED"]


async def test_expire_now_releases_every_due_hold_in_batches() -> None:
    store = FakeStore()
    for _ in range(7):
        await place(store, ttl_s=1)
    store.now = START + timedelta(seconds=1)
    result = await Expirer(store, batch=3).expire_now()
    assert (result.released, result.checked) == (7, 7)
    assert store.calls["expire_due_holds"] == 3  # 3 + 3 + 1


NOW = 1_000.0


class PausedPass:
    """A store whose pass waits, once it has begun, until the test lets it go on (to act while a
    pass runs). It finds nothing due; with ``db_ahead_s`` it reports the database's clock that
    far ahead of this process's."""

    def __init__(self, db_ahead_s: float | None = None) -> None:
        self.entered = asyncio.Event()
        self.go_on = asyncio.Event()
        self._db_ahead_s = db_ahead_s

    async def expire_due_holds(self, limit: int) -> ExpiryPass:
        self.entered.set()
        await self.go_on.wait()
        self.go_on.clear()
        if self._db_ahead_s is None:
            return ExpiryPass(0, 0, None)
        return ExpiryPass(0, 0, None, datetime.fromtimestamp(NOW + self._db_ahead_s, UTC))


@contextlib.asynccontextmanager
async def expirer_running(store: ExpiryStore, sleeper: Sleeper) -> AsyncIterator[Expirer]:
    """An expirer on ``store`` running in the background, its clock stopped at ``NOW``."""
    expirer = Expirer(store, recheck_s=RECHECK_S, clock=lambda: NOW, sleep=sleeper)
    task = asyncio.create_task(expirer.run())
    try:
        yield expirer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_hold_made_while_a_pass_runs_is_planned_for() -> None:
    """The pass's query did not see a hold made meanwhile, and its notice found the previous plan
    already past: the expirer still plans for it instead of sleeping until the re-check."""
    store, sleeper = PausedPass(), Sleeper()
    async with expirer_running(store, sleeper) as expirer:
        await asyncio.wait_for(store.entered.wait(), timeout=1.0)
        expirer.notice_expiry(datetime.fromtimestamp(NOW + 3, UTC))
        store.go_on.set()
        assert await sleeper.next_nap() == pytest.approx(3.0, abs=0.01)


async def test_next_pass_is_planned_from_the_pass_and_counts_its_own_time() -> None:
    """The pass reports the next lapse from its own clock reading; the time the pass took is
    taken off, so the expirer lands on the deadline, not that much after it."""
    clock = [1_000.0]

    class Slow:
        async def expire_due_holds(self, limit: int) -> ExpiryPass:
            clock[0] += 0.5  # the pass took 0.5 s after it read its clock
            return ExpiryPass(0, 0, 4.0)

    result = await Expirer(Slow(), clock=lambda: clock[0]).expire_now()
    assert result.next_lapse_s == pytest.approx(3.5)


async def test_deadlines_on_the_database_clock_are_planned_on_this_process_clock() -> None:
    """expires_at comes from the database's clock, the plan from this process's clock: with the
    database 5 s ahead, a hold made during a pass and due 3 s later is planned for 3 s, not 8,
    and a hold due before the plan still wakes the expirer (the pass reports its clock)."""
    store, sleeper = PausedPass(db_ahead_s=5), Sleeper()
    async with expirer_running(store, sleeper) as expirer:
        await asyncio.wait_for(store.entered.wait(), timeout=1.0)
        expirer.notice_expiry(datetime.fromtimestamp(NOW + 5 + 3, UTC))
        store.go_on.set()
        assert await sleeper.next_nap() == pytest.approx(3.0, abs=0.01)
        store.entered.clear()
        expirer.notice_expiry(datetime.fromtimestamp(NOW + 5 + 1, UTC))  # before the plan
        await asyncio.wait_for(store.entered.wait(), timeout=1.0)


async def test_backs_off_while_every_due_hold_is_locked_elsewhere() -> None:
    """A due hold locked by another transaction is skipped and still due: the expirer comes back
    soon, but waits longer each time none is released (up to 0.1 s), not every 2 ms for as long
    as the lock is held; once a pass releases holds again, it no longer waits."""
    locked = [True] * 8 + [False]

    class Locked:
        async def expire_due_holds(self, limit: int) -> ExpiryPass:
            still_locked = locked.pop(0) if locked else False
            if still_locked:
                return ExpiryPass(0, 1, 0.0)  # one due hold, skipped: locked by someone else
            return ExpiryPass(1, 1, None)

    sleeper = Sleeper()
    async with expirer_running(Locked(), sleeper):
        naps = []
        for _ in range(9):
            naps.append(await sleeper.next_nap())
            sleeper.ring()
        assert naps[:8] == pytest.approx(
            [0.006, 0.010, 0.018, 0.034, 0.066, 0.102, 0.102, 0.102], abs=1e-9
        )
        assert naps[8] == pytest.approx(RECHECK_S + 0.002)  # released: nothing due, no back-off
