"""An in-memory reservation store: the same steps as ``reservation_service.store`` over dicts, with
the same pure rules between them, and no I/O. The application layer, the batcher and the expirer
run on it in unit tests.

Beyond the store's methods it lets a test set the clock (``now``), fail the next call of a
method (``fail_next``), hold batches at a gate (``gate``) and see what was asked (``batches``,
``calls``) and what the outbox got (``changes``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

from reservation_service import errors, holds
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
    Reservation,
    ReservationStatus,
)
from reservation_service.store import After, Amend, Settle
from slotlock.errors import SlotlockError

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class FakeStore:
    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self.events: dict[str, Event] = {}
        self.reservations: dict[str, Reservation] = {}
        self.changes: list[Change] = []  # the outbox, in commit order
        self.batches: list[list[HoldRequest]] = []  # each create_holds call's requests
        self.settle_batches: list[list[str]] = []  # each settle_holds call's reservation ids
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None  # when set up, create_holds waits for it
        self._failures: dict[str, Exception] = {}

    def fail_next(self, method: str, error: Exception) -> None:
        self._failures[method] = error

    async def _enter(self, method: str) -> None:
        self.calls[method] += 1
        await asyncio.sleep(0)  # a real store yields to the loop on every round trip
        if method in self._failures:
            raise self._failures.pop(method)

    async def list_history(
        self, *, event_id: str | None, reservation_id: str | None, after_id: int, limit: int
    ) -> list[HistoryEntry]:
        """The changes committed so far, as history rows (ids from 1)."""
        await self._enter("list_history")
        entries = [
            HistoryEntry(
                id=n,
                event_id=c.event.id,
                reservation_id=c.reservation.id if c.reservation else "",
                occurred_at=c.occurred_at,
                actor=c.actor or "system",
                change_type=c.type.value,
                reservation_status=c.reservation.status if c.reservation else None,
                seats=c.seats,
                event_version=c.event.version,
                reason=c.reason,
                detail=c.detail,
            )
            for n, c in enumerate(self.changes, start=1)
        ]
        return [
            e
            for e in entries
            if e.id > after_id
            and (event_id is None or e.event_id == event_id)
            and (reservation_id is None or e.reservation_id == reservation_id)
        ][:limit]

    def _commit(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self.events[change.event.id] = change.event
            if change.reservation is not None:
                self.reservations[change.reservation.id] = change.reservation
        self.changes.extend(changes)

    # --- catalog -------------------------------------------------------------------------------

    async def upsert_event(self, spec: EventSpec, actor: str = "system") -> Event:
        await self._enter("upsert_event")
        existing = next((e for e in self.events.values() if e.code == spec.code), None)
        if existing is None:
            event, change = holds.create_event(spec, str(uuid.uuid4()), self.now)
            self._commit([change])
            return event
        event = existing
        changes: list[Change] = []
        if spec.status is EventStatus.CANCELLED:
            for pending in self._of_event(event.id, ReservationStatus.PENDING):
                outcome = holds.release_hold(event, pending, self.now)
                assert outcome is not None
                event, _, change = outcome
                changes.append(change)
        event, change = holds.update_event(event, spec, self.now)
        self._commit([*changes, change])
        return event

    async def get_event(self, event_id: str) -> Event:
        await self._enter("get_event")
        if event_id not in self.events:
            raise errors.EventNotFound(event_id)
        return self.events[event_id]

    async def list_events(
        self,
        *,
        from_date: date | None,
        to_date: date | None,
        status: EventStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Event]:
        await self._enter("list_events")
        found = sorted(
            (
                e
                for e in self.events.values()
                if (from_date is None or e.local_date >= from_date)
                and (to_date is None or e.local_date <= to_date)
                and (status is None or e.reported_status is status)
            ),
            key=lambda e: (e.starts_at, uuid.UUID(e.id)),
        )
        if after is not None:
            found = [e for e in found if (e.starts_at, uuid.UUID(e.id)) > after]
        return found[:limit]

    # --- holds ---------------------------------------------------------------------------------

    async def create_holds(
        self, requests: Sequence[HoldRequest], policy: HoldPolicy
    ) -> list[HoldOutcome]:
        self.batches.append(list(requests))
        if self.gate is not None:
            await self.gate.wait()
        await self._enter("create_holds")
        for request in requests:  # as Postgres does: text with NUL fails the whole transaction
            if "\x00" in request.customer_ref or "\x00" in (request.idempotency_key or ""):
                raise errors.DatabaseFailed("DataError: PostgreSQL text fields cannot contain NUL")
        events = {
            r.event_id: self.events[r.event_id] for r in requests if r.event_id in self.events
        }
        changes: list[Change] = []
        for event_id in sorted(events):
            for lapsed in self._of_event(event_id, ReservationStatus.PENDING):
                if holds.is_lapsed(lapsed, self.now):
                    events[event_id], _, change = holds.expire_hold(
                        events[event_id], lapsed, self.now
                    )
                    changes.append(change)
        known = {r.idempotency_key: r for r in self.reservations.values() if r.idempotency_key}
        checked_at = time.monotonic()
        outcomes: list[HoldOutcome] = []
        for request in requests:
            if holds.has_given_up(request, checked_at):
                outcomes.append(errors.DeadlinePassed())
                continue
            if request.event_id not in events:
                outcomes.append(errors.EventNotFound(request.event_id))
                continue
            try:
                key = request.idempotency_key
                if key is not None and key in known:
                    outcomes.append(holds.check_retry(known[key], request))
                    continue
                event, reservation, change = holds.place_hold(
                    events[request.event_id], request, policy, self.now, str(uuid.uuid4())
                )
            except SlotlockError as refusal:
                outcomes.append(refusal)
                continue
            events[event.id] = event
            if key is not None:
                known[key] = reservation
            changes.append(change)
            outcomes.append(reservation)
        self._commit(changes)
        return outcomes

    async def amend_hold(self, reservation_id: str, amend: Amend) -> Reservation:
        await self._enter("amend_hold")
        reservation = self._reservation(reservation_id)
        updated = amend(reservation, self.now)
        self.reservations[updated.id] = updated
        return updated

    async def settle_hold(
        self, reservation_id: str, settle: Settle, actor: str = "system"
    ) -> Reservation:
        await self._enter("settle_hold")
        reservation = self._reservation(reservation_id)
        outcome = settle(self.events[reservation.event_id], reservation, self.now)
        if outcome is None:
            return reservation
        _, changed, change = outcome
        self._commit([change])
        return changed

    async def settle_holds(
        self, items: Sequence[tuple[str, Settle, str]]
    ) -> list[Reservation | SlotlockError]:
        self.settle_batches.append([rid for rid, _, _ in items])
        if self.gate is not None:
            await self.gate.wait()
        await self._enter("settle_holds")
        outcomes: list[Reservation | SlotlockError] = []
        changes: list[Change] = []
        for reservation_id, settle, _ in items:
            if reservation_id not in self.reservations:
                outcomes.append(errors.ReservationNotFound(reservation_id))
                continue
            reservation = self.reservations[reservation_id]
            try:
                outcome = settle(self.events[reservation.event_id], reservation, self.now)
            except SlotlockError as refusal:
                outcomes.append(refusal)
                continue
            if outcome is None:
                outcomes.append(reservation)
                continue
            _, changed, change = outcome
            self._commit([change])  # the next item for the same hold or event sees it
            changes.append(change)
            outcomes.append(changed)
        return outcomes

    async def get_reservation(self, reservation_id: str) -> Reservation:
        await self._enter("get_reservation")
        return self._reservation(reservation_id)

    async def list_reservations(
        self,
        *,
        event_id: str | None,
        status: ReservationStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Reservation]:
        await self._enter("list_reservations")
        found = sorted(
            (
                r
                for r in self.reservations.values()
                if (event_id is None or r.event_id == event_id)
                and (status is None or r.status is status)
            ),
            key=lambda r: (r.created_at, uuid.UUID(r.id)),
        )
        if after is not None:
            found = [r for r in found if (r.created_at, uuid.UUID(r.id)) > after]
        return found[:limit]

    # --- expiry --------------------------------------------------------------------------------

    async def expire_due_holds(self, limit: int = 500) -> ExpiryPass:
        await self._enter("expire_due_holds")
        due = sorted(
            (r for r in self.reservations.values() if holds.is_lapsed(r, self.now)),
            key=lambda r: r.expires_at,
        )
        changes: list[Change] = []
        for lapsed in due[:limit]:
            event = self.events[lapsed.event_id]
            event, _, change = holds.expire_hold(event, lapsed, self.now)
            self._commit([change])
            changes.append(change)
        pending = [
            r.lapses_at for r in self.reservations.values() if r.status is ReservationStatus.PENDING
        ]
        next_lapse_s = (min(pending) - self.now).total_seconds() if pending else None
        return ExpiryPass(len(changes), len(due), next_lapse_s)

    # --- helpers -------------------------------------------------------------------------------

    def _reservation(self, reservation_id: str) -> Reservation:
        if reservation_id not in self.reservations:
            raise errors.ReservationNotFound(reservation_id)
        return self.reservations[reservation_id]

    def _of_event(self, event_id: str, status: ReservationStatus) -> list[Reservation]:
        return sorted(
            (
                r
                for r in self.reservations.values()
                if r.event_id == event_id and r.status is status
            ),
            key=lambda r: r.id,
        )

    def paid_and_pending(self, event_id: str) -> tuple[int, int]:
        event = self.events[event_id]
        return event.paid, event.pending

    def with_seats_taken(self, event_id: str, pending: int) -> None:
        """Mark seats as held without reservations (for listing states)."""
        self.events[event_id] = replace(self.events[event_id], pending=pending)
