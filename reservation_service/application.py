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
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

from reservation_service import errors, holds
from reservation_service.batching import (
    HoldBatcher,
    SettleBatcher,
    SettleOutcome,
    SettleRequest,
)
from reservation_service.expiry import Expirer
from reservation_service.holds import (
    Change,
    Event,
    EventSpec,
    EventStatus,
    ExpiryPass,
    HistoryEntry,
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
from slotlock.identity import TRUSTED, Caller

DEFAULT_PAGE = 50
MAX_EVENTS_PAGE = 500
# The contract's bound: 200 reservations with every field at its longest stay far below gRPC's
# 4 MiB message limit.
MAX_RESERVATIONS_PAGE = 200
MAX_CHANGES_PAGE = 500

T = TypeVar("T")


class Store(Protocol):
    """What the use cases need from storage: ``store.ReservationStore`` on Postgres, or the
    in-memory fake of the unit tests."""

    async def upsert_event(self, spec: EventSpec, actor: str = "system") -> Event: ...

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
        self, requests: Sequence[HoldRequest], policy: HoldPolicy
    ) -> list[HoldOutcome]: ...

    async def amend_hold(self, reservation_id: str, amend: Amend) -> Reservation: ...

    async def settle_hold(
        self, reservation_id: str, settle: Settle, actor: str = "system"
    ) -> Reservation: ...

    async def settle_holds(
        self, items: Sequence[tuple[str, Settle, str]]
    ) -> list[Reservation | SlotlockError]: ...

    async def get_reservation(self, reservation_id: str) -> Reservation: ...

    async def list_reservations(
        self,
        *,
        event_id: str | None,
        status: ReservationStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Reservation]: ...

    async def list_history(
        self, *, event_id: str | None, reservation_id: str | None, after_id: int, limit: int
    ) -> list[HistoryEntry]: ...


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

        async def place_batch(requests: Sequence[HoldRequest]) -> list[HoldOutcome]:
            metrics.HOLD_BATCH_SIZE.observe(len(requests))
            started = time.perf_counter()
            try:
                with tracing.batch_span(
                    "CreateHold batch",
                    [origins.get(id(request)) for request in requests],
                    {
                        "slotlock.events": len({r.event_id for r in requests}),
                        "slotlock.batch_size": len(requests),
                    },
                ):
                    return await store.create_holds(requests, policy)
            finally:
                metrics.HOLD_BATCH_SECONDS.observe(time.perf_counter() - started)

        self._batcher = HoldBatcher(place_batch, max_batch=max_batch)

        async def settle_batch(batch: Sequence[SettleRequest]) -> list[SettleOutcome]:
            return await store.settle_holds([(r.reservation_id, r.settle, r.actor) for r in batch])

        # Confirms and releases: group commit too (``SettleBatcher``).
        self._settler = SettleBatcher(settle_batch, max_batch=max_batch)

    async def close(self) -> None:
        """Stop batching: callers still queued hear that the service is going away."""
        await self._batcher.close()
        await self._settler.close()

    # --- catalog -------------------------------------------------------------------------------

    async def upsert_event(self, spec: EventSpec, caller: Caller = TRUSTED) -> Event:
        holds.validate_event_spec(spec)
        holds.validate_overrides(spec.overrides, self._policy)
        return await self._store.upsert_event(spec, caller.subject)

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
        # Bad input never enters a batch; an event's own (lower) seats-per-hold maximum is
        # checked by place_hold.
        holds.validate_hold_request(request, self._policy)
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
        self,
        reservation_id: str,
        token: str,
        attempt: PaymentAttempt,
        in_progress: bool = False,
        caller: Caller = TRUSTED,
    ) -> Reservation:
        """Keep the attempt on the hold; ``in_progress`` (the buyer has started paying) gives it
        one grace period, which the expirer respects (it reads reservations.lapses_at)."""
        self._tokens.require(token)
        holds.validate_payment_attempt(attempt)
        policy = self._policy

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            return holds.record_payment(event, reservation, attempt, in_progress, policy, now)

        return await self._store.settle_hold(reservation_id, settle, caller.subject)

    async def confirm_hold(
        self, reservation_id: str, token: str, payment_reference: str, caller: Caller = TRUSTED
    ) -> Reservation:
        """PAID, on time or late (``paid_late``). A late payment that found no seats is
        committed as PAYMENT_TO_REFUND and answered with ``errors.PaymentToRefund``."""
        self._tokens.require(token)
        reference = holds.validate_payment_reference(payment_reference)
        policy = self._policy
        why: list[str] = []

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            outcome = holds.confirm_payment(event, reservation, reference, policy, now)
            if outcome is not None:
                why[:] = [outcome[2].reason]
            return outcome

        reservation = await self._settle_in_batch(reservation_id, settle, caller.subject)
        if reservation.status is ReservationStatus.PAYMENT_TO_REFUND:
            raise errors.PaymentToRefund(
                reservation.id,
                reservation.payment_reference,
                reservation.quantity,
                why[0] if why else "its seats were taken while it lapsed",
            )
        return reservation

    async def extend_hold(
        self, reservation_id: str, token: str, extend_by_s: int, caller: Caller = TRUSTED
    ) -> Reservation:
        """Push a PENDING hold's deadline out, within the caps (the rule is ``holds``')."""
        self._tokens.require(token)
        if extend_by_s < 0:
            raise errors.InvalidField("extend_by_s", "must be 0 (the default step) or more")
        extend_by = timedelta(seconds=extend_by_s) if extend_by_s else None
        policy = self._policy

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            return holds.extend_hold(event, reservation, extend_by, policy, now)

        extended = await self._store.settle_hold(reservation_id, settle, caller.subject)
        # A later deadline needs no early wake-up: the expirer re-reads the next lapse after
        # every pass, so when it wakes for the old deadline it finds this one and sleeps on.
        self._expirer.notice_expiry(extended.lapses_at)
        return extended

    async def release_hold(
        self, reservation_id: str, token: str, caller: Caller = TRUSTED
    ) -> Reservation:
        self._tokens.require(token)

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            self._tokens.check(reservation.id, token)
            return holds.release_hold(event, reservation, now)

        return await self._settle_in_batch(reservation_id, settle, caller.subject)

    async def _settle_in_batch(
        self, reservation_id: str, settle: Settle, actor: str
    ) -> Reservation:
        """``store.settle_hold``, sharing a transaction with the confirms and releases queued
        meanwhile (group commit); a refusal is this request's own."""
        outcome = await self._settler.place(SettleRequest(reservation_id, settle, actor))
        if isinstance(outcome, SlotlockError):
            raise outcome
        return outcome

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

    async def refund_reservation(
        self, reservation_id: str, reason: str, quantity: int = 0, caller: Caller = TRUSTED
    ) -> Reservation:
        """Refund ``quantity`` seats (0: all that are left); the reason goes on the feed."""
        why = reason.strip()  # its length is bounded at the edge (the contract's bounds)
        if quantity < 0:
            raise errors.InvalidField("quantity", "must be 0 (every seat left) or more")

        def settle(
            event: Event, reservation: Reservation, now: datetime
        ) -> tuple[Event, Reservation, Change] | None:
            return holds.refund_reservation(event, reservation, now, why, quantity)

        return await self._store.settle_hold(reservation_id, settle, caller.subject)

    async def list_changes(
        self,
        *,
        event_id: str | None,
        reservation_id: str | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[HistoryEntry], str]:
        """A page of one event's or one reservation's history, oldest first."""
        if (event_id is None) == (reservation_id is None):
            raise errors.InvalidField("event_id", "give exactly one of event_id and reservation_id")
        if page_size < 0:
            raise errors.InvalidField("page_size", "must be 0 (default) or more")
        limit = min(page_size or DEFAULT_PAGE, MAX_CHANGES_PAGE)
        scope = page_tokens.scope_of("changes", event_id, reservation_id)
        values = page_tokens.decode(page_token, scope)
        after_id = 0
        if values is not None:
            try:
                (last,) = values
                after_id = int(last)
            except ValueError:
                raise errors.InvalidField("page_token", "not a token this service issued") from None
        found = await self._store.list_history(
            event_id=event_id, reservation_id=reservation_id, after_id=after_id, limit=limit + 1
        )
        if len(found) <= limit:
            return found, ""
        page = found[:limit]
        return page, page_tokens.encode([str(page[-1].id)], scope)

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
