"""Transactions against Postgres, in one small place: open one, retry it when the failure is
transient, and turn the driver's errors into the service's own. Nothing above this module sees a
psycopg exception; the store above it only writes SQL steps.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, TupleRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from reservation_service import errors
from slotlock import deadlines, metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
Pool: TypeAlias = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]
Cursor: TypeAlias = psycopg.AsyncCursor[DictRow]


class RaceLost(Exception):
    """Raised by a transaction's work when it saw, without waiting, that a concurrent writer holds
    rows it needs: the whole transaction is run again a moment later (see ``Database.run``)."""


# Worth running the whole transaction again: the connection dropped, Postgres chose us as the
# victim of a deadlock or serialization conflict, or the work itself saw it lost a race.
TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    PoolTimeout,
    RaceLost,
)
# For a write that may race another on a unique key (an idempotency key): the retry finds it.
DUPLICATE_KEY: tuple[type[Exception], ...] = (pg_errors.UniqueViolation,)
ATTEMPTS = 4


class Database:
    """``unavailable_after_s``: how long a transaction may wait for Postgres (a pooled connection,
    and retries of transient failures) before the caller is told UNAVAILABLE; never longer than
    the caller's own deadline (``slotlock.deadlines``), so a caller hears UNAVAILABLE rather than
    its deadline passing, and no retry loop outlives the call."""

    def __init__(self, pool: Pool, *, unavailable_after_s: float = 2.0) -> None:
        self.pool = pool
        self.unavailable_after_s = unavailable_after_s
        # Transactions run again, by the name of what failed them: for logs and tests (a
        # DeadlockDetected here means two writers took their locks in opposite orders).
        self.retries: Counter[str] = Counter()
        self.unavailable = 0  # transactions given up as DatabaseUnavailable (outage reports)

    def budget_s(self) -> float:
        """How long the transaction starting now may wait for the database."""
        budget = self.unavailable_after_s
        left = deadlines.remaining()
        if left is not None:  # answer a little before the caller gives up, so it hears why
            budget = min(budget, left - min(0.1, max(left, 0.0) * 0.1))
        return max(budget, 0.0)

    async def run(
        self,
        work: Callable[[Cursor], Awaitable[T]],
        *,
        retry_also: tuple[type[Exception], ...] = (),
        pipeline: bool = False,
    ) -> T:
        """Run ``work`` in one transaction, again (a few times, with jitter) if it fails for a
        transient reason or one of ``retry_also``, all within ``budget_s()``.

        ``pipeline``: run it in libpq's pipeline mode. A statement whose result is read (fetch)
        waits for it as usual, but those that are only executed are sent together with the next
        read or with COMMIT: BEGIN goes out with the first query, and a transaction's writes and
        COMMIT in one round trip. Their errors surface at that moment, not at their execute: only
        for work that does not catch a statement's error itself."""
        budget = self.budget_s()
        give_up_at = time.monotonic() + budget
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((*TRANSIENT, *retry_also)),
                stop=stop_after_attempt(ATTEMPTS) | stop_after_delay(budget),
                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                before_sleep=self._note_retry,
                reraise=True,
            ):
                with attempt:
                    left = give_up_at - time.monotonic()
                    if left <= 0:
                        raise PoolTimeout("no time left to reach the database")
                    async with self.pool.connection(timeout=left) as conn:
                        if pipeline:
                            async with conn.pipeline(), conn.transaction():
                                return await work(conn.cursor(row_factory=dict_row))
                        async with conn.transaction():
                            return await work(conn.cursor(row_factory=dict_row))
        except pg_errors.CheckViolation as error:
            # Only reachable through a bug above: the database refused to oversell.
            log.error("database refused a change: %s", error)
            raise errors.WrongHoldState("the database refused this change (seat counts)") from error
        except (*TRANSIENT, *retry_also) as error:
            self.unavailable += 1
            raise errors.DatabaseUnavailable(type(error).__name__) from error
        except psycopg.Error as error:
            raise errors.DatabaseFailed(f"{type(error).__name__}: {error}") from error
        raise AssertionError("unreachable")

    def _note_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        name = type(error).__name__
        self.retries[name] += 1
        metrics.DB_RETRIES.labels(name).inc()
        # A lost connection is an outage: the health probe logs it once, with a count; a
        # deadlock or a lost race is worth a line each.
        outage = isinstance(error, psycopg.OperationalError | PoolTimeout)
        log.log(
            logging.DEBUG if outage else logging.INFO,
            "transaction failed (%s); running it again",
            name,
        )
