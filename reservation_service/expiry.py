"""The expirer: sleeps until the earliest PENDING expires_at, then releases due holds in batches.

It is woken early in-process when a hold with an earlier deadline is created here, and re-checks
at least every ``recheck_s`` for holds created by other replicas (a replica that died leaves its
holds to the others). Correctness never depends on timing: claiming uses SKIP LOCKED, so any
number of expirers release each hold exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from reservation_service.holds import ExpiryPass
from slotlock.errors import Unavailable

log = logging.getLogger(__name__)

# The longest wait between passes while every due hold is locked by another transaction.
LOCKED_WAIT_MAX_S = 0.1

# Waits until ``wake`` is set or ``timeout`` seconds pass; tests replace it to run without time.
Sleep = Callable[[asyncio.Event, float], Awaitable[None]]


class ExpiryStore(Protocol):
    async def expire_due_holds(self, limit: int) -> ExpiryPass: ...


async def sleep_until_woken(wake: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout)


class Expirer:
    def __init__(
        self,
        store: ExpiryStore,
        *,
        batch: int = 500,
        recheck_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = sleep_until_woken,
    ) -> None:
        self._store = store
        self._batch = batch
        self._recheck_s = recheck_s
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._planned_wake = 0.0  # clock() of the next planned pass
        self._noticed = math.inf  # earliest expires_at noticed since the running pass began
        # The database's clock minus ``clock`` (as of the last pass): deadlines are read on the
        # former, plans made on the latter; a skew between them must not delay a release.
        self._skew = 0.0
        self._locked_wait_s = 0.0  # back-off while every due hold is locked by someone else

    def notice_expiry(self, expires_at: datetime) -> None:
        """A hold due at ``expires_at`` was created: wake early if it is due before the plan
        (or, while a pass runs, plan for it when the pass ends)."""
        due = expires_at.timestamp()
        self._noticed = min(self._noticed, due)
        if due - self._skew < self._planned_wake:
            self._wake.set()

    async def expire_now(self) -> ExpiryPass:
        """One full pass (all due holds, in batches); the admin RPC and the loop both use it.
        Its ``next_lapse_s`` counts from when this call started (by ``clock``)."""
        started = self._clock()
        released = 0
        checked: int | None = None
        while True:
            before = self._clock()
            step = await self._store.expire_due_holds(self._batch)
            if step.db_now is not None:  # read after ``before``: errs towards waking early
                self._skew = step.db_now.timestamp() - before
            released += step.released
            checked = step.checked if checked is None else checked
            if step.released < self._batch:
                next_lapse_s = step.next_lapse_s
                if next_lapse_s is not None:  # the step's clock was read after ``started``
                    next_lapse_s -= self._clock() - started
                return ExpiryPass(released, max(checked, released), next_lapse_s)

    def _back_off_if_all_locked(self, result: ExpiryPass | None) -> float:
        """The least wait before the next pass. Due holds that another transaction has locked
        (a confirmation in flight, usually over in milliseconds) are skipped and still count as
        due, so the next pass would come 2 ms later; while a pass releases none of them, the
        wait doubles up to ``LOCKED_WAIT_MAX_S`` rather than querying 500 times a second behind
        a lock held for seconds (a stalled client, until lock and idle timeouts end it)."""
        if result is None or result.released or result.checked == 0:
            self._locked_wait_s = 0.0
        else:
            self._locked_wait_s = min(max(2 * self._locked_wait_s, 0.004), LOCKED_WAIT_MAX_S)
        return self._locked_wait_s

    async def run(self) -> None:
        while True:
            self._noticed = math.inf
            result: ExpiryPass | None = None
            try:
                result = await self.expire_now()
                if result.released:
                    log.debug("expired %d holds", result.released)
                until_next = result.next_lapse_s
            except Unavailable as error:
                log.warning("expirer: %s", error)
                until_next = 1.0
            except Exception:  # a bug must not stop expiry for good: log it loudly, go on
                log.exception("expirer: pass failed; retrying in 1 s")
                until_next = 1.0
            delay = self._recheck_s if until_next is None else min(until_next, self._recheck_s)
            delay = max(delay, self._back_off_if_all_locked(result))
            # A hold made here while the pass ran (its notice found the old plan in the past).
            delay = min(delay, self._noticed - self._skew - self._clock())
            delay = max(delay, 0.0) + 0.002  # land just after the deadline, not just before
            self._planned_wake = self._clock() + delay
            self._wake.clear()
            await self._sleep(self._wake, delay)
