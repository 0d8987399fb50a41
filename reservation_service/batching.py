"""Group commit: concurrent requests share one transaction. CreateHold batches holds for any
events (``HoldBatcher``); ConfirmHold and ReleaseHold batch the same way (``SettleBatcher``).

Holds on a hot event serialize on its row lock anyway; taking the lock once for every request
that queued up while the previous transaction ran turns N commits into one, which is how the
service gets past the one-commit-per-hold limit of the raw database. Requests for different
events join the same batch too (the store locks their events in id order), so load spread over
many events costs as few commits as load on one.

A buyer's request never fails because of another buyer's request. Refusals by the rules are each
request's own outcome already (a missing event or hold too); but when the whole transaction
fails for a reason that may be tied to one request (a statement Postgres rejects, a bug on odd
input), the batch is split in halves and each half placed again, in order, until the request it
belongs to fails alone: a few more transactions, and only on that rare path. An outage
(``Unavailable``: the database layer has already retried it) concerns every request alike and
fails the batch whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from reservation_service.holds import HoldOutcome, HoldRequest, Reservation
from reservation_service.store import Settle
from slotlock import deadlines
from slotlock.errors import SlotlockError, Unavailable

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Outcome = TypeVar("Outcome")


class Batcher(Generic[Request, Outcome]):
    """Queues requests and places them ``max_batch`` at a time with ``place_batch`` (one
    transaction per call, one outcome per request, in order): while a batch runs, the requests
    that arrive queue up and form the next one."""

    def __init__(
        self,
        place_batch: Callable[[Sequence[Request]], Awaitable[list[Outcome]]],
        *,
        max_batch: int = 256,
        what: str = "requests",
    ) -> None:
        self._place_batch = place_batch
        self._max_batch = max_batch
        self._what = what  # for the log line of a split batch
        self._queue: deque[tuple[Request, asyncio.Future[Outcome]]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def place(self, request: Request) -> Outcome:
        """Queue ``request`` behind the running batch, if any, and await its own outcome. A
        caller that gives up (deadline, cancel) before its batch starts is left out of it."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # This task was started by one caller and copied its context; the batches it runs serve
        # many callers, so that caller's deadline must not bound them (slotlock.deadlines).
        deadlines.set_remaining(None)
        queue = self._queue
        try:
            while queue:
                batch: list[tuple[Request, asyncio.Future[Outcome]]] = []
                while queue and len(batch) < self._max_batch:
                    waiting = queue.popleft()
                    if not waiting[1].done():  # skip callers that already gave up
                        batch.append(waiting)
                if batch:
                    await self._settle(batch)
        finally:
            self._worker = None
            for _, future in queue:  # cancelled mid-way (closing): those still queued hear it
                future.cancel()
            queue.clear()

    async def _settle(self, batch: list[tuple[Request, asyncio.Future[Outcome]]]) -> None:
        """Place ``batch`` and give each caller its outcome; split it when its transaction fails
        for a reason that may belong to one of its requests (see the module's docstring)."""
        batch = [waiting for waiting in batch if not waiting[1].done()]  # some may have gone
        if not batch:
            return
        try:
            outcomes = await self._place_batch([r for r, _ in batch])
        except asyncio.CancelledError:  # closing mid-batch: its callers hear it too
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            if len(batch) > 1 and not isinstance(error, Unavailable):
                log.info(
                    "a batch of %d %s failed (%s: %s); splitting it to find the request it "
                    "belongs to",
                    len(batch),
                    self._what,
                    type(error).__name__,
                    error,
                )
                half = len(batch) // 2
                await self._settle(batch[:half])
                await self._settle(batch[half:])
                return
            for _, future in batch:  # each caller of this batch hears why it failed
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)


class HoldBatcher(Batcher[HoldRequest, HoldOutcome]):
    """CreateHold's group commit. A caller whose ``request.deadline`` passes while its batch
    waits for the database is left out by the store just before it writes (see
    ``ReservationStore.create_holds``)."""

    def __init__(
        self,
        place_batch: Callable[[Sequence[HoldRequest]], Awaitable[list[HoldOutcome]]],
        max_batch: int = 256,
    ) -> None:
        super().__init__(place_batch, max_batch=max_batch, what="holds")


@dataclass(frozen=True, eq=False)
class SettleRequest:
    """A confirm or a release: the hold, the callback deciding its change, and who asked (see
    ``ReservationStore.settle_holds``)."""

    reservation_id: str
    settle: Settle
    actor: str = "system"


SettleOutcome = Reservation | SlotlockError


class SettleBatcher(Batcher[SettleRequest, SettleOutcome]):
    """ConfirmHold's and ReleaseHold's group commit: one transaction settles every hold queued."""

    def __init__(
        self,
        place_batch: Callable[[Sequence[SettleRequest]], Awaitable[list[SettleOutcome]]],
        max_batch: int = 256,
    ) -> None:
        super().__init__(place_batch, max_batch=max_batch, what="confirms/releases")
