"""Transactions against Postgres, in one small place: open one, retry it when the failure is
transient, and turn the driver's errors into the service's own. Nothing above this module sees a
psycopg exception; the store above it only writes SQL steps.
"""

from __future__ import annotations

import logging
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
    wait_random_exponential,
)

from reservation_service import errors

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
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # Transactions run again, by the name of what failed them: for logs and tests (a
        # DeadlockDetected here means two writers took their locks in opposite orders).
        self.retries: Counter[str] = Counter()

    async def run(
        self,
        work: Callable[[Cursor], Awaitable[T]],
        *,
        retry_also: tuple[type[Exception], ...] = (),
    ) -> T:
        """Run ``work`` in one transaction, again (a few times, with jitter) if it fails for a
        transient reason or one of ``retry_also``."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((*TRANSIENT, *retry_also)),
                stop=stop_after_attempt(ATTEMPTS),
                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                before_sleep=self._note_retry,
                reraise=True,
            ):
                with attempt:
                    async with self.pool.connection() as conn, conn.transaction():
                        return await work(conn.cursor(row_factory=dict_row))
        except pg_errors.CheckViolation as error:
            # Only reachable through a bug above: the database refused to oversell.
            log.error("database refused a change: %s", error)
            raise errors.WrongHoldState("the database refused this change (seat counts)") from error
        except (*TRANSIENT, *retry_also) as error:
            raise errors.DatabaseUnavailable(type(error).__name__) from error
        except psycopg.Error as error:
            raise errors.DatabaseFailed(f"{type(error).__name__}: {error}") from error
        raise AssertionError("unreachable")

    def _note_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        name = type(error).__name__
        self.retries[name] += 1
        log.info("transaction failed (%s); running it again", name)
