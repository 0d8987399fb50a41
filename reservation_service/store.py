"""The SQL steps of each use case. Every change is one transaction that updates the event's
counters, the reservation rows and the outbox together; the rules between the steps are the pure
ones of ``holds``. Transactions, retries and driver errors live in ``db``, row layout in ``rows``.

Lock order, to rule out deadlocks: every writer locks reservation rows before their event row
(confirm, release, refund, expiry, and an upsert that cancels an event). The one exception,
CreateHold, holds the event row and touches existing reservations only with SKIP LOCKED, never
waiting on them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import TypeVar

from reservation_service import errors, holds, rows, sql
from reservation_service.db import DUPLICATE_KEY, Cursor, Database, RaceLost
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
from slotlock import metrics, tracing
from slotlock.errors import SlotlockError

T = TypeVar("T")
CATALOG = sql.queries("catalog.sql")
HOLDS = sql.queries("holds.sql")
EXPIRY = sql.queries("expiry.sql")
BATCHES = sql.queries("batches.sql")
# slotlock_hold_changes_total, by the change's kind (counted once committed).
_COUNTED_CHANGES = {
    holds.ChangeType.HOLD_CREATED: metrics.HOLD_CHANGES.labels("created"),
    holds.ChangeType.HOLD_CONFIRMED: metrics.HOLD_CHANGES.labels("confirmed"),
    holds.ChangeType.HOLD_RELEASED: metrics.HOLD_CHANGES.labels("released"),
    holds.ChangeType.HOLD_EXPIRED: metrics.HOLD_CHANGES.labels("expired"),
    holds.ChangeType.RESERVATION_REFUNDED: metrics.HOLD_CHANGES.labels("refunded"),
}

# A change to one hold and its event, decided by the pure rules: None when there is nothing to do.
Settle = Callable[[Event, Reservation, datetime], tuple[Event, Reservation, Change] | None]
# A change to a hold alone (its event's seats untouched).
Amend = Callable[[Reservation, datetime], Reservation]
# Where a listing resumes: the (sort key, id) of the last row of the previous page.
After = tuple[datetime, uuid.UUID]


class ReservationStore:
    def __init__(
        self,
        db: Database,
        encode_change: Callable[[Change], bytes],
        *,
        on_commit: Callable[[], None] = lambda: None,
        notify_other_replicas: bool = True,
    ) -> None:
        """``encode_change`` turns a change into the outbox payload (the feed's wire format is
        the caller's business); ``on_commit`` runs after each commit that wrote to the outbox."""
        self.db = db
        self._encode = encode_change
        self._on_commit = on_commit
        self._notify = notify_other_replicas

    # --- catalog -------------------------------------------------------------------------------

    async def upsert_event(self, spec: EventSpec, actor: str = "system") -> Event:
        async def work(cur: Cursor) -> tuple[Event, list[Change]]:
            now = await _db_now(cur)
            created, change = holds.create_event(spec, str(uuid.uuid4()), now)
            await cur.execute(CATALOG["insert_event"], rows.event_params(created, now))
            if await cur.fetchone() is not None:
                return created, [change]
            # The code exists: update it. Cancelling releases its pending holds, locked first.
            pending: list[Reservation] = []
            if spec.status is EventStatus.CANCELLED:
                await cur.execute(
                    CATALOG["lock_pending_holds_of_event_by_code"], {"code": spec.code}
                )
                pending = [rows.reservation_from_row(row) for row in await cur.fetchall()]
            await cur.execute(CATALOG["lock_event_by_code"], {"code": spec.code})
            row = await cur.fetchone()
            assert row is not None, "the insert found this code"
            event = rows.event_from_row(row)
            if spec.status is EventStatus.CANCELLED and event.pending != sum(
                r.quantity for r in pending
            ):
                # A hold was placed between the two locks: its row is not ours, and waiting
                # for it while holding the event row is what deadlocks. Start again.
                raise RaceLost("a hold was placed while the event was being cancelled")
            changes: list[Change] = []
            released: list[Reservation] = []
            for reservation in pending:
                outcome = holds.release_hold(event, reservation, now)
                assert outcome is not None, "only PENDING holds were locked"
                event, reservation, change = outcome
                released.append(reservation)
                changes.append(change)
            event, change = holds.update_event(event, spec, now)
            changes.append(change)
            await _update_reservations(cur, released)
            await cur.execute(HOLDS["update_event"], rows.event_params(event, now))
            return event, changes

        return await self._write(work, actor=actor)

    async def get_event(self, event_id: str) -> Event:
        async def work(cur: Cursor) -> Event:
            await cur.execute(CATALOG["get_event"], {"id": event_id})
            row = await cur.fetchone()
            if row is None:
                raise errors.EventNotFound(event_id)
            return rows.event_from_row(row)

        return await self.db.run(work)

    async def list_events(
        self,
        *,
        from_date: date | None,
        to_date: date | None,
        status: EventStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Event]:
        """Events by (starts_at, id), the first ``limit`` after ``after``."""

        async def work(cur: Cursor) -> list[Event]:
            await cur.execute(
                CATALOG["list_events"],
                {
                    "from_date": from_date,
                    "to_date": to_date,
                    "status": status.value if status else None,
                    "after_starts_at": after[0] if after else None,
                    "after_id": after[1] if after else None,
                    "limit": limit,
                },
            )
            return [rows.event_from_row(row) for row in await cur.fetchall()]

        return await self.db.run(work)

    # --- holds ---------------------------------------------------------------------------------

    async def create_holds(
        self, requests: Sequence[HoldRequest], policy: HoldPolicy
    ) -> list[HoldOutcome]:
        """Place a batch of holds, on any number of events, in one transaction (group commit).
        Each request gets its own outcome: a reservation, or the error that refused it (a
        missing event refuses only the requests for it). One statement per step for the whole
        batch; the events are locked in id order, so batches sharing events never deadlock.

        A caller whose deadline has passed by the time the events are locked and their lapsed
        holds released (the waits of this transaction) is left out: DeadlinePassed, no seats.
        What remains is a window of a few milliseconds, from that check to COMMIT (the inserts,
        the counters and the outbox rows), in which a caller may still give up and find, if it
        looks, that its hold was written. Its idempotency key is how it recovers: a retry with
        the same key gets that hold (and its token) back instead of a second one.
        """

        async def work(cur: Cursor) -> tuple[list[HoldOutcome], list[Change]]:
            event_ids = sorted({r.event_id for r in requests})
            await cur.execute(BATCHES["lock_events"], {"ids": event_ids})
            found = await cur.fetchall()
            if not found:
                return [errors.EventNotFound(r.event_id) for r in requests], []
            now: datetime = max(row["db_now"] for row in found)
            events = {str(row["id"]): rows.event_from_row(row) for row in found}
            changes: list[Change] = []
            # A lapsed hold never blocks a buyer: release it before counting seats.
            await cur.execute(
                BATCHES["lock_lapsed_holds_of_events"], {"event_ids": list(events), "now": now}
            )
            expired: list[Reservation] = []
            for lapsed in await cur.fetchall():
                reservation = rows.reservation_from_row(lapsed)
                event, reservation, change = holds.expire_hold(
                    events[reservation.event_id], reservation, now
                )
                events[event.id] = event
                expired.append(reservation)
                changes.append(change)
            await _update_reservations(cur, expired)
            # Per-customer limits: one read per event that has a limit (none by default).
            held_by: dict[str, dict[str, int]] = {}
            for event in events.values():
                if holds.customer_limited(event, policy):
                    held_by[event.id] = await _customer_seats(
                        cur, event.id, [r for r in requests if r.event_id == event.id]
                    )
            known = await _find_by_keys(cur, requests)
            ids = _new_ids(len(requests))
            # The last moment a caller that gave up can be left out: from here to the inserts
            # below there is no await.
            checked_at = time.monotonic()
            outcomes: list[HoldOutcome] = []
            placed: list[Reservation] = []
            for request, new_id in zip(requests, ids, strict=True):
                if holds.has_given_up(request, checked_at):
                    outcomes.append(errors.DeadlinePassed())
                    continue
                event_or_none = events.get(request.event_id)
                if event_or_none is None:
                    outcomes.append(errors.EventNotFound(request.event_id))
                    continue
                seats_of = held_by.get(request.event_id, {})
                try:
                    key = request.idempotency_key
                    if key is not None and key in known:
                        outcomes.append(holds.check_retry(known[key], request))
                        continue
                    event, reservation, change = holds.place_hold(
                        event_or_none,
                        request,
                        policy,
                        now,
                        new_id,
                        seats_of.get(request.customer_ref, 0),
                    )
                except SlotlockError as refusal:
                    outcomes.append(refusal)
                    continue
                events[event.id] = event
                if request.customer_ref in seats_of:  # only with a limit
                    seats_of[request.customer_ref] += request.quantity
                if key is not None:
                    known[key] = reservation
                placed.append(reservation)
                changes.append(change)
                outcomes.append(reservation)
            if placed:
                await cur.execute(BATCHES["insert_holds"], rows.holds_params(placed))
            if changes:
                touched = sorted({c.event.id for c in changes})
                await cur.execute(
                    BATCHES["update_events_counters"],
                    rows.counters_params([events[i] for i in touched], now),
                )
            return await _explain_refusals(cur, requests, outcomes, events), changes

        # UniqueViolation: a concurrent batch (another replica) took the same idempotency key
        # first; run again and the key is found.
        return await self._write(work, retry_also=DUPLICATE_KEY, pipeline=True)

    async def amend_hold(self, reservation_id: str, amend: Amend) -> Reservation:
        """Lock the hold, let ``amend`` decide its new state, store it (no seats move)."""

        async def work(cur: Cursor) -> tuple[Reservation, list[Change]]:
            reservation, now = await _lock_reservation(cur, reservation_id)
            updated = amend(reservation, now)
            await _update_reservations(cur, [updated])
            return updated, []

        return await self._write(work)

    async def settle_hold(
        self, reservation_id: str, settle: Settle, actor: str = "system"
    ) -> Reservation:
        """Lock the hold, then its event (the lock order), let ``settle`` decide, store both.
        ``actor`` (the caller) goes into the history."""

        async def work(cur: Cursor) -> tuple[Reservation, list[Change]]:
            reservation, now = await _lock_reservation(cur, reservation_id)
            await cur.execute(HOLDS["lock_event"], {"id": reservation.event_id})
            row = await cur.fetchone()
            assert row is not None, "reservations reference their event"
            outcome = settle(rows.event_from_row(row), reservation, now)
            if outcome is None:  # an idempotent retry: nothing to change
                return reservation, []
            event, changed, change = outcome
            await _update_reservations(cur, [changed])
            await cur.execute(HOLDS["update_event_counters"], rows.counter_params(event, now))
            return changed, [change]

        return await self._write(work, actor=actor)

    async def settle_holds(
        self, items: Sequence[tuple[str, Settle, str]]
    ) -> list[Reservation | SlotlockError]:
        """Settle a batch of holds (confirms, releases: group commit) in one transaction: each
        item is (reservation id, ``settle``, actor), as ``settle_hold`` takes them, and gets
        its own outcome, the settled hold or the error that refused it. The holds are locked
        in id order, then their events in id order (the lock order), one statement each; items
        for the same hold are settled in turn, each seeing the one before."""

        async def work(cur: Cursor) -> tuple[list[Reservation | SlotlockError], list[Change]]:
            await cur.execute(
                BATCHES["lock_reservations"], {"ids": sorted({rid for rid, _, _ in items})}
            )
            found = await cur.fetchall()
            if not found:
                return [errors.ReservationNotFound(rid) for rid, _, _ in items], []
            now: datetime = max(row["db_now"] for row in found)
            held = {str(row["id"]): rows.reservation_from_row(row) for row in found}
            await cur.execute(
                BATCHES["lock_events"], {"ids": sorted({r.event_id for r in held.values()})}
            )
            events = {str(row["id"]): rows.event_from_row(row) for row in await cur.fetchall()}
            outcomes: list[Reservation | SlotlockError] = []
            changes: list[Change] = []
            updated: dict[str, Reservation] = {}
            for reservation_id, settle, actor in items:
                reservation = held.get(reservation_id)
                if reservation is None:
                    outcomes.append(errors.ReservationNotFound(reservation_id))
                    continue
                try:
                    outcome = settle(events[reservation.event_id], reservation, now)
                except SlotlockError as refusal:
                    outcomes.append(refusal)
                    continue
                if outcome is None:  # an idempotent retry: nothing to change
                    outcomes.append(reservation)
                    continue
                event, changed, change = outcome
                events[event.id] = event
                held[changed.id] = updated[changed.id] = changed
                changes.append(replace(change, actor=change.actor or actor))
                outcomes.append(changed)
            await _update_reservations(cur, list(updated.values()))
            if changes:
                touched = sorted({c.event.id for c in changes})
                await cur.execute(
                    BATCHES["update_events_counters"],
                    rows.counters_params([events[i] for i in touched], now),
                )
            return outcomes, changes

        return await self._write(work, pipeline=True)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        async def work(cur: Cursor) -> Reservation:
            await cur.execute(HOLDS["get_reservation"], {"id": reservation_id})
            row = await cur.fetchone()
            if row is None:
                raise errors.ReservationNotFound(reservation_id)
            return rows.reservation_from_row(row)

        return await self.db.run(work)

    async def list_reservations(
        self,
        *,
        event_id: str | None,
        status: ReservationStatus | None,
        after: After | None,
        limit: int,
    ) -> list[Reservation]:
        """Reservations by (created_at, id), the first ``limit`` after ``after``."""

        async def work(cur: Cursor) -> list[Reservation]:
            await cur.execute(
                HOLDS["list_reservations"],
                {
                    "event_id": event_id,
                    "status": status.value if status else None,
                    "after_created_at": after[0] if after else None,
                    "after_id": after[1] if after else None,
                    "limit": limit,
                },
            )
            return [rows.reservation_from_row(row) for row in await cur.fetchall()]

        return await self.db.run(work)

    async def list_history(
        self, *, event_id: str | None, reservation_id: str | None, after_id: int, limit: int
    ) -> list[HistoryEntry]:
        """History rows of an event or a reservation by id, the first ``limit`` after
        ``after_id``."""

        async def work(cur: Cursor) -> list[HistoryEntry]:
            await cur.execute(
                HOLDS["list_history"],
                {
                    "event_id": event_id,
                    "reservation_id": reservation_id,
                    "after_id": after_id,
                    "limit": limit,
                },
            )
            return [rows.history_from_row(row) for row in await cur.fetchall()]

        return await self.db.run(work)

    # --- expiry --------------------------------------------------------------------------------

    async def expire_due_holds(self, limit: int = 500) -> ExpiryPass:
        """Release up to ``limit`` PENDING holds past their expires_at. Safe with any number of
        expirers at once: each due hold is claimed by one of them (SKIP LOCKED). Three round
        trips (pipeline mode): the claim (with the pass's clock, the due count and the next
        lapse), the event locks, then every write and COMMIT together."""

        async def work(cur: Cursor) -> tuple[ExpiryPass, list[Change]]:
            await cur.execute(EXPIRY["claim_due_holds"], {"limit": limit})
            found = await cur.fetchall()
            now: datetime = found[0]["db_now"]
            checked = int(found[0]["due"])
            next_lapse: datetime | None = found[0]["next_lapse_at"]
            next_lapse_s = None if next_lapse is None else (next_lapse - now).total_seconds()
            claimed = [rows.reservation_from_row(row) for row in found if row["id"] is not None]
            if not claimed:
                return ExpiryPass(0, checked, next_lapse_s, now), []
            event_ids = sorted({r.event_id for r in claimed})
            await cur.execute(EXPIRY["lock_events"], {"ids": event_ids})
            events = {str(row["id"]): rows.event_from_row(row) for row in await cur.fetchall()}
            changes: list[Change] = []
            expired: list[Reservation] = []
            for lapsed in claimed:
                event, reservation, change = holds.expire_hold(events[lapsed.event_id], lapsed, now)
                events[event.id] = event
                expired.append(reservation)
                changes.append(change)
            await _update_reservations(cur, expired)
            await cur.executemany(
                HOLDS["update_event_counters"],
                [rows.counter_params(e, now) for e in events.values()],
            )
            passed = ExpiryPass(len(expired), max(checked, len(expired)), next_lapse_s, now)
            return passed, changes

        return await self._write(work, pipeline=True)

    # --- plumbing ------------------------------------------------------------------------------

    async def _write(
        self,
        work: Callable[[Cursor], Awaitable[tuple[T, list[Change]]]],
        retry_also: tuple[type[Exception], ...] = (),
        actor: str = "system",
        *,
        pipeline: bool = False,
    ) -> T:
        """Run ``work`` in one transaction and write its changes to the outbox and the history
        in it (one statement); ``actor`` is who made a change that does not name its own.
        ``pipeline``: see ``Database.run`` (the hot paths: their writes, the outbox and COMMIT go
        out in one round trip)."""

        async def transaction(cur: Cursor) -> tuple[T, list[Change]]:
            result, changes = await work(cur)
            if changes:
                await cur.execute(
                    HOLDS["insert_outbox"],
                    {
                        "event_ids": [c.event.id for c in changes],
                        "payloads": [self._encode(c) for c in changes],
                        "trace_context": tracing.current_traceparent(),
                        "notify": self._notify,
                        **rows.history_params(changes, actor),
                    },
                )
            return result, changes

        result, changes = await self.db.run(transaction, retry_also=retry_also, pipeline=pipeline)
        if changes:
            self._on_commit()
            for change in changes:
                counted = _COUNTED_CHANGES.get(change.type)
                if counted is not None:
                    counted.inc()
        return result


async def _db_now(cur: Cursor) -> datetime:
    await cur.execute("SELECT clock_timestamp() AS now")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


async def _lock_reservation(cur: Cursor, reservation_id: str) -> tuple[Reservation, datetime]:
    await cur.execute(HOLDS["lock_reservation"], {"id": reservation_id})
    row = await cur.fetchone()
    if row is None:
        raise errors.ReservationNotFound(reservation_id)
    return rows.reservation_from_row(row), row["db_now"]


async def _find_by_keys(cur: Cursor, requests: Sequence[HoldRequest]) -> dict[str, Reservation]:
    keys = [r.idempotency_key for r in requests if r.idempotency_key is not None]
    if not keys:
        return {}
    await cur.execute(HOLDS["find_by_idempotency_keys"], {"keys": keys})
    return {row["idempotency_key"]: rows.reservation_from_row(row) for row in await cur.fetchall()}


async def _customer_seats(
    cur: Cursor, event_id: str, requests: Sequence[HoldRequest]
) -> dict[str, int]:
    refs = sorted({r.customer_ref for r in requests if r.customer_ref})
    if not refs:
        return {}
    await cur.execute(HOLDS["customer_seats"], {"event_id": event_id, "customer_refs": refs})
    seats = {ref: 0 for ref in refs}
    seats.update({row["customer_ref"]: int(row["seats"]) for row in await cur.fetchall()})
    return seats


async def _update_reservations(cur: Cursor, reservations: Sequence[Reservation]) -> None:
    """Store what changed on ``reservations`` (distinct ids): one statement for any number (a
    batch of confirms, releases or lapsed holds), not one each."""
    if reservations:
        await cur.execute(BATCHES["update_reservations"], rows.reservations_params(reservations))


async def _explain_refusals(
    cur: Cursor,
    requests: Sequence[HoldRequest],
    outcomes: list[HoldOutcome],
    events: dict[str, Event],
) -> list[HoldOutcome]:
    """Refused while seats are in checkout: say when the event's first hold lapses (read on
    this refusal path only, once per event)."""
    in_checkout = sorted(
        {
            r.event_id
            for r, o in zip(requests, outcomes, strict=True)
            if isinstance(o, errors.NotEnoughSeats) and o.in_checkout
        }
    )
    if not in_checkout:
        return outcomes
    next_lapse: dict[str, datetime | None] = {}
    for event_id in in_checkout:
        await cur.execute(HOLDS["next_lapse_of_event"], {"event_id": event_id})
        lapse = await cur.fetchone()
        next_lapse[event_id] = lapse["next_lapse_at"] if lapse else None
    return [
        holds.explain_refusal(o, next_lapse[r.event_id], events[r.event_id].time_zone)
        if isinstance(o, errors.NotEnoughSeats) and r.event_id in next_lapse
        else o
        for r, o in zip(requests, outcomes, strict=True)
    ]


def _new_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs from one read of the OS's randomness, not one each."""
    pool = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=pool[n : n + 16], version=4)) for n in range(0, 16 * count, 16)]
