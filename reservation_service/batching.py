"""Group commit for CreateHold: concurrent holds on one event share one transaction.

Holds on a hot event serialize on its row lock anyway; taking the lock once for every request
that queued up while the previous transaction ran turns N commits into one, which is how the
service gets past the one-commit-per-hold limit of the raw database.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence

from reservation_service.holds import HoldOutcome, HoldRequest

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
        seats."""
        future: asyncio.Future[HoldOutcome] = asyncio.get_running_loop().create_future()
        self._queues[request.event_id].append((request, future))
        if request.event_id not in self._workers:
            self._workers[request.event_id] = asyncio.create_task(self._drain(request.event_id))
        return await future

    async def _drain(self, event_id: str) -> None:
        queue = self._queues[event_id]
        try:
            while queue:
                batch: list[Waiting] = []
                while queue and len(batch) < self._max_batch:
                    waiting = queue.popleft()
                    if not waiting[1].done():  # skip callers that already gave up
                        batch.append(waiting)
                if not batch:
                    continue
                try:
                    outcomes = await self._place_batch(event_id, [r for r, _ in batch])
                except asyncio.CancelledError:  # closing mid-batch: its callers hear it too
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:  # the whole batch failed: each caller hears why
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            del self._workers[event_id]
            for _, future in queue:  # cancelled mid-way (closing): those still queued hear it
                future.cancel()
            self._queues.pop(event_id, None)

    async def close(self) -> None:
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
