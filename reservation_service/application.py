"""The reservation use cases, one method each: what a request goes through between the gRPC edge
(which only converts) and the store (which only runs SQL steps).

This is where a request is judged on its own (by the pure ``holds.validate_*`` rules, before it
touches a batch or the database), where hold tokens are minted and checked, where CreateHold
joins a batch (group commit), where the expirer hears of a nearer deadline and where page tokens
are bound to the filters they were issued for. The rules themselves live in ``holds``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol, TypeVar

from reservation_service import errors, holds
from reservation_service.batching import HoldBatcher
from reservation_service.expiry import Expirer
from reservation_service.holds import (
    Change,
    Event,
    EventSpec,
    EventStatus,
    ExpiryPass,
    HoldOutcome,
    HoldPolicy,
    HoldRequest,
    HoldTokens,
    PaymentAttempt,
    Reservation,
    ReservationStatus,
)
from reservation_service.store import After, Amend, Settle
from slotlock import metrics, page_tokens, tracing
from slotlock.errors import SlotlockError
from slotlock.identity import Caller

DEFAULT_PAGE = 50
MAX_EVENTS_PAGE = 500
# The contract's bound: 200 reservations with every field at its longest stay far below gRPC's
# 4 MiB message limit.
MAX_RESERVATIONS_PAGE = 200

T = TypeVar("T")


class Store(Protocol):
    """What the use cases need from storage: ``store.ReservationStore`` on Postgres, or the
    in-memory fake of the unit tests."""

    async def upsert_event(self, spec: EventSpec) -> Event: ...

    async def get_event(self, event_id: str) -> Event: ...

    async def list_events(
        self,
        *,
        from_date: date | None,
        to_date: date | None,
        status: EventStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Event]: ...

    async def create_holds(
        self, event_id: str, requests: Sequence[HoldRequest], policy: HoldPolicy
    ) -> list[HoldOutcome]: ...

    async def amend_hold(self, reservation_id: str, amend: Amend) -> Reservation: ...

    async def settle_hold(self, reservation_id: str, settle: Settle) -> Reservation: ...

    async def get_reservation(self, reservation_id: str) -> Reservation: ...

    async def list_reservations(
        self,
        *,
        event_id: str | None,
        status: ReservationStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Reservation]: ...


@dataclass(frozen=True)
class Hold:
    """A placed hold and the token that proves its holder (given again on an idempotent retry)."""

    reservation: Reservation
    token: str


class Reservations:
    def __init__(
        self,
        store: Store,
        expirer: Expirer,
        policy: HoldPolicy,
        tokens: HoldTokens,
        *,
        max_batch: int = 256,
    ) -> None:
        self._store = store
        self._expirer = expirer
        self._policy = policy
        self._tokens = tokens

        # The trace context of each CreateHold waiting in a batch (by the request's identity),
        # so the batch's span joins their traces; empty with tracing off.
        self._origins: dict[int, tracing.Context] = {}
        origins = self._origins

        async def place_batch(event_id: str, requests: Sequence[HoldRequest]) -> list[HoldOutcome]:
            metrics.HOLD_BATCH_SIZE.observe(len(requests))
            started = time.perf_counter()
            try:
                with tracing.batch_span(
                    "CreateHold batch",
                    [origins.get(id(request)) for request in requests],
                    {"slotlock.event_id": event_id, "slotlock.batch_size": len(requests)},
                ):
                    return await store.create_holds(event_id, requests, policy)
            finally:
                metrics.HOLD_BATCH_SECONDS.observe(time.perf_counter() - started)

        self._batcher = HoldBatcher(place_batch, max_batch=max_batch)

    async def close(self) -> None:
        """Stop batching: callers still queued hear that the service is going away."""
        await self._batcher.close()

    # --- catalog -------------------------------------------------------------------------------

    async def upsert_event(self, spec: EventSpec) -> Event:
        holds.validate_event_spec(spec)
        return await self._store.upsert_event(spec)

    async def get_event(self, event_id: str) -> Event:
        return await self._store.get_event(event_id)

    async def list_events(
        self,
        *,
        from_date: date | None,
        to_date: date | None,
        status: EventStatus | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Event], str]:
        """A page of events by start time, and the token of the next page ("" at the end)."""
        if from_date and to_date and from_date > to_date:
            raise errors.InvalidField("to_date", "must not be before from_date")
        scope = page_tokens.scope_of("events", from_date, to_date, status)
        limit, after = _page(page_size, MAX_EVENTS_PAGE, page_token, scope)
        events = await self._store.list_events(
            from_date=from_date, to_date=to_date, status=status, after=after, limit=limit + 1
        )
        return _cut(events, limit, lambda e: (e.starts_at, e.id), scope)

    # --- holds ---------------------------------------------------------------------------------

    async def create_hold(self, request: HoldRequest) -> Hold:
        holds.validate_hold_request(request, self._policy)  # bad input never enters a batch
        origin = tracing.current_context()
        if origin is not None:
            self._origins[id(request)] = origin
        try:
            outcome = await self._batcher.place(request)
        finally:
            self._origins.pop(id(request), None)
        if isinstance(outcome, SlotlockError):
            raise outcome
        self._expirer.notice_expiry(outcome.expires_at)
        return Hold(outcome, self._tokens.token_for(outcome.id))

    async def record_payment_attempt(
        self, reservation_id: str, token: str, attempt: PaymentAttempt
    ) -> Reservation:
        self._tokens.require(token)
        holds.validate_payment_attempt(attempt)

        def amend(reservation: Reservation, now: datetime) -> Reservation:
            self._tokens.check(reservation.id, token)
            return holds.record_payment_attempt(reservation, attempt, now)

        return await self._store.amend_hold(reservation_id, amend)

    async def confirm_hold(
        self, reservation_id: str, token: str, payment_reference: str
    ) -> Reservation:
        self._tokens.require(token)
        reference = holds.validate_payment_reference(payment_reference)

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            return holds.confirm_hold(event, reservation, reference, now)

        return await self._store.settle_hold(reservation_id, settle)

    async def release_hold(self, reservation_id: str, token: str) -> Reservation:
        self._tokens.require(token)

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            return holds.release_hold(event, reservation, now)

        return await self._store.settle_hold(reservation_id, settle)

    async def get_reservation(self, reservation_id: str, token: str, caller: Caller) -> Reservation:
        """Any reservation for an admin; for anyone else only the one the hold token proves."""
        if caller.is_admin:
            return await self._store.get_reservation(reservation_id)
        self._tokens.require(token)
        reservation = await self._store.get_reservation(reservation_id)
        self._tokens.check(reservation.id, token)
        return reservation

    async def list_reservations(
        self,
        *,
        event_id: str | None,
        status: ReservationStatus | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Reservation], str]:
        """A page of reservations by creation time, and the token of the next page."""
        scope = page_tokens.scope_of("reservations", event_id, status)
        limit, after = _page(page_size, MAX_RESERVATIONS_PAGE, page_token, scope)
        found = await self._store.list_reservations(
            event_id=event_id, status=status, after=after, limit=limit + 1
        )
        return _cut(found, limit, lambda r: (r.created_at, r.id), scope)

    # --- admin ---------------------------------------------------------------------------------

    async def refund_reservation(self, reservation_id: str, reason: str) -> Reservation:
        why = reason.strip()  # its length is bounded at the edge (the contract's bounds)

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            return holds.refund_reservation(event, reservation, now, why)

        return await self._store.settle_hold(reservation_id, settle)

    async def expire_pass(self) -> ExpiryPass:
        """Release every hold due now (the admin ExpireStaleHolds), beside the expirer's loop."""
        return await self._expirer.expire_now()


# --- paging -------------------------------------------------------------------------------------


def _page(page_size: int, max_page: int, page_token: str, scope: str) -> tuple[int, After | None]:
    """The page's size and where it resumes, decoded into typed values for the query."""
    if page_size < 0:
        raise errors.InvalidField("page_size", "must be 0 (default) or more")
    limit = min(page_size or DEFAULT_PAGE, max_page)
    values = page_tokens.decode(page_token, scope)
    if values is None:
        return limit, None
    try:
        sort_key, last_id = values
        return limit, (datetime.fromisoformat(sort_key), uuid.UUID(last_id))
    except ValueError:
        raise errors.InvalidField("page_token", "not a token this service issued") from None


def _cut(
    found: list[T], limit: int, key: Callable[[T], tuple[datetime, str]], scope: str
) -> tuple[list[T], str]:
    """The page (``found`` holds one row more than ``limit`` when another page follows)."""
    if len(found) <= limit:
        return found, ""
    page = found[:limit]
    sort_key, last_id = key(page[-1])
    return page, page_tokens.encode([sort_key.isoformat(), last_id], scope)
