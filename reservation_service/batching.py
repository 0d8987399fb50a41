"""Group commit for CreateHold: concurrent holds on one event share one transaction.

Holds on a hot event serialize on its row lock anyway; taking the lock once for every request
that queued up while the previous transaction ran turns N commits into one, which is how the
service gets past the one-commit-per-hold limit of the raw database.

A buyer's hold never fails because of another buyer's request. Refusals by the rules are each
request's own outcome already; but when the whole transaction fails for a reason that may be tied
to one request (a statement Postgres rejects, a bug on odd input), the batch is split in halves
and each half placed again, in order, until the request it belongs to fails alone: a few more
transactions, and only on that rare path. An outage (``Unavailable``: the database layer has
already retried it) or a missing event concerns every request alike and fails the batch whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence

from reservation_service.holds import HoldOutcome, HoldRequest
from slotlock import deadlines
from slotlock.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

Waiting = tuple[HoldRequest, "asyncio.Future[HoldOutcome]"]
# Places one batch of holds on one event in one transaction: one outcome per request, in order.
PlaceBatch = Callable[[str, Sequence[HoldRequest]], Awaitable[list[HoldOutcome]]]


class HoldBatcher:
    def __init__(self, place_batch: PlaceBatch, max_batch: int = 256) -> None:
        self._place_batch = place_batch
        self._max_batch = max_batch
        self._queues: dict[str, deque[Waiting]] = defaultdict(deque)
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def place(self, request: HoldRequest) -> HoldOutcome:
        """Queue ``request`` behind its event's running transaction, if any, and await its own
        outcome. A caller that gives up (deadline, cancel) before its batch starts takes no
        seats; one whose ``request.deadline`` passes while its batch waits for the database is
        left out by the store just before it writes (see ``ReservationStore.create_holds``)."""
        future: asyncio.Future[HoldOutcome] = asyncio.get_running_loop().create_future()
        self._queues[request.event_id].append((request, future))
        if request.event_id not in self._workers:
            self._workers[request.event_id] = asyncio.create_task(self._drain(request.event_id))
        return await future

    async def _drain(self, event_id: str) -> None:
        # This task was started by one caller and copied its context; the batches it runs serve
        # many callers, so that caller's deadline must not bound them (slotlock.deadlines).
        deadlines.set_remaining(None)
        queue = self._queues[event_id]
        try:
            while queue:
                batch: list[Waiting] = []
                while queue and len(batch) < self._max_batch:
                    waiting = queue.popleft()
                    if not waiting[1].done():  # skip callers that already gave up
                        batch.append(waiting)
                if batch:
                    await self._settle(event_id, batch)
        finally:
            del self._workers[event_id]
            for _, future in queue:  # cancelled mid-way (closing): those still queued hear it
                future.cancel()
            self._queues.pop(event_id, None)

    async def _settle(self, event_id: str, batch: list[Waiting]) -> None:
        """Place ``batch`` and give each caller its outcome; split it when its transaction fails
        for a reason that may belong to one of its requests (see the module's docstring)."""
        batch = [waiting for waiting in batch if not waiting[1].done()]  # some may have gone
        if not batch:
            return
        try:
            outcomes = await self._place_batch(event_id, [r for r, _ in batch])
        except asyncio.CancelledError:  # closing mid-batch: its callers hear it too
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            if len(batch) > 1 and not isinstance(error, Unavailable | NotFound):
                log.info(
                    "a batch of %d holds on event %s failed (%s: %s); splitting it to find the "
                    "request it belongs to",
                    len(batch),
                    event_id,
                    type(error).__name__,
                    error,
                )
                half = len(batch) // 2
                await self._settle(event_id, batch[:half])
                await self._settle(event_id, batch[half:])
                return
            for _, future in batch:  # each caller of this batch hears why it failed
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
