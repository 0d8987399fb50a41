"""The SQL store: every change is one transaction that updates the event's counters, the
reservation rows and the outbox together. Driver errors stop here and leave as domain errors.

Lock order, to rule out deadlocks: a writer locks reservation rows before their event row. The
one exception, CreateHold, holds the event row and touches existing reservations only with
SKIP LOCKED (never waiting on them).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from reservation_service import errors, holds, sql
from reservation_service.convert import change_to_proto
from reservation_service.holds import (
    Change,
    Event,
    EventSpec,
    EventStatus,
    HoldPolicy,
    HoldRequest,
    HoldTokens,
    Money,
    PaymentAttempt,
    Reservation,
    ReservationStatus,
    TicketType,
)
from slotlock.errors import SlotlockError

log = logging.getLogger(__name__)

CATALOG = sql.queries("catalog.sql")
HOLDS = sql.queries("holds.sql")
EXPIRY = sql.queries("expiry.sql")

T = TypeVar("T")
Cursor = psycopg.AsyncCursor[DictRow]
HoldOutcome = Reservation | SlotlockError

# Worth retrying the whole transaction: the connection dropped, or Postgres chose us as the
# victim of a deadlock or serialization conflict.
TRANSIENT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    PoolTimeout,
)


@dataclass(frozen=True)
class ExpiryPass:
    released: int
    checked: int


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[str, str] | None  # (sort key, id) of the last row of the previous page


class ReservationStore:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        policy: HoldPolicy,
        tokens: HoldTokens,
        *,
        on_commit: Callable[[], None] = lambda: None,
        notify_other_replicas: bool = True,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self.tokens = tokens
        self._on_commit = on_commit
        self._notify = notify_other_replicas

    # --- catalog -------------------------------------------------------------------------------

    async def upsert_event(self, spec: EventSpec) -> Event:
        holds.validate_event_spec(spec)

        async def work(cur: Cursor) -> tuple[Event, list[Change]]:
            now = await _db_now(cur)
            new_id = str(uuid.uuid4())
            created, change = holds.create_event(spec, new_id, now)
            await cur.execute(CATALOG["insert_event"], _event_params(created, now))
            if await cur.fetchone() is not None:
                return created, [change]
            # The code exists: update it. Cancelling releases pending holds, locked first.
            await cur.execute(CATALOG["lock_event_by_code"], {"code": spec.code})
            existing = await cur.fetchone()
            assert existing is not None
            pending: list[DictRow] = []
            if spec.status is EventStatus.CANCELLED:
                await cur.execute(
                    CATALOG["lock_pending_holds_of_event"], {"event_id": existing["id"]}
                )
                pending = await cur.fetchall()
            event = event_from_row(existing)
            changes: list[Change] = []
            released: list[Reservation] = []
            for row in pending:
                outcome = holds.release_hold(event, _reservation_from_row(row), now)
                assert outcome is not None
                event, reservation, change = outcome
                released.append(reservation)
                changes.append(change)
            event, change = holds.update_event(event, spec, now)
            changes.append(change)
            await _update_reservations(cur, released)
            await cur.execute(HOLDS["update_event"], _event_params(event, now))
            return event, changes

        return await self._write(work)

    async def get_event(self, event_id: str) -> Event:
        async def work(cur: Cursor) -> Event:
            await cur.execute(CATALOG["get_event"], {"id": event_id})
            row = await cur.fetchone()
            if row is None:
                raise errors.EventNotFound(event_id)
            return event_from_row(row)

        return await self._read(work)

    async def list_events(
        self,
        *,
        from_date: date | None,
        to_date: date | None,
        status: EventStatus | None,
        page: Page,
    ) -> tuple[list[Event], str]:
        async def work(cur: Cursor) -> list[Event]:
            await cur.execute(
                CATALOG["list_events"],
                {
                    "from_date": from_date,
                    "to_date": to_date,
                    "status": status.value if status else None,
                    "after_starts_at": page.after[0] if page.after else None,
                    "after_id": page.after[1] if page.after else None,
                    "limit": page.limit + 1,
                },
            )
            return [event_from_row(row) for row in await cur.fetchall()]

        events = await self._read(work)
        more = len(events) > page.limit
        events = events[: page.limit]
        token = encode_page_token(events[-1].starts_at.isoformat(), events[-1].id) if more else ""
        return events, token

    # --- holds ---------------------------------------------------------------------------------

    async def create_holds(
        self, event_id: str, requests: Sequence[HoldRequest]
    ) -> list[HoldOutcome]:
        """Place a batch of holds on one event in one transaction (group commit). Each request
        gets its own outcome: a reservation, or the error that refused it."""

        async def work(cur: Cursor) -> tuple[list[HoldOutcome], list[Change]]:
            await cur.execute(HOLDS["lock_event"], {"id": event_id})
            row = await cur.fetchone()
            if row is None:
                raise errors.EventNotFound(event_id)
            now: datetime = row["db_now"]
            event = event_from_row(row)
            changes: list[Change] = []
            # A lapsed hold never blocks a buyer: release it before counting seats.
            await cur.execute(
                HOLDS["lock_lapsed_holds_of_event"], {"event_id": event_id, "now": now}
            )
            expired: list[Reservation] = []
            for lapsed in await cur.fetchall():
                event, reservation, change = holds.expire_hold(
                    event, _reservation_from_row(lapsed), now
                )
                expired.append(reservation)
                changes.append(change)
            known = await _find_by_keys(cur, requests)
            outcomes: list[HoldOutcome] = []
            placed: list[Reservation] = []
            for request in requests:
                try:
                    key = request.idempotency_key
                    if key is not None and key in known:
                        outcomes.append(holds.check_retry(known[key], request))
                        continue
                    event, reservation, change = holds.place_hold(
                        event, request, self.policy, now, str(uuid.uuid4())
                    )
                except SlotlockError as refusal:
                    outcomes.append(refusal)
                    continue
                if key is not None:
                    known[key] = reservation
                placed.append(reservation)
                changes.append(change)
                outcomes.append(reservation)
            await _update_reservations(cur, expired)
            if placed:
                await cur.execute(HOLDS["insert_reservations"], _new_holds_params(placed))
            if changes:
                await cur.execute(HOLDS["update_event_counters"], _counter_params(event, now))
            return outcomes, changes

        return await self._write(work, retry_on=(*TRANSIENT, pg_errors.UniqueViolation))

    async def record_payment_attempt(
        self, reservation_id: str, token: str, attempt: PaymentAttempt
    ) -> Reservation:
        async def work(cur: Cursor) -> tuple[Reservation, list[Change]]:
            reservation, now = await self._lock_reservation(cur, reservation_id, token)
            updated = holds.record_payment_attempt(reservation, attempt, now)
            await _update_reservations(cur, [updated])
            return updated, []

        return await self._write(work)

    async def confirm_hold(
        self, reservation_id: str, token: str, payment_reference: str
    ) -> Reservation:
        return await self._change_hold(
            reservation_id,
            token,
            lambda event, reservation, now: holds.confirm_hold(
                event, reservation, payment_reference, now
            ),
        )

    async def release_hold(self, reservation_id: str, token: str) -> Reservation:
        return await self._change_hold(reservation_id, token, holds.release_hold)

    async def refund_reservation(self, reservation_id: str) -> Reservation:
        return await self._change_hold(reservation_id, None, holds.refund_reservation)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        async def work(cur: Cursor) -> Reservation:
            await cur.execute(HOLDS["get_reservation"], {"id": reservation_id})
            row = await cur.fetchone()
            if row is None:
                raise errors.ReservationNotFound(reservation_id)
            return _reservation_from_row(row)

        return await self._read(work)

    async def list_reservations(
        self, *, event_id: str | None, status: ReservationStatus | None, page: Page
    ) -> tuple[list[Reservation], str]:
        async def work(cur: Cursor) -> list[Reservation]:
            await cur.execute(
                HOLDS["list_reservations"],
                {
                    "event_id": event_id,
                    "status": status.value if status else None,
                    "after_created_at": page.after[0] if page.after else None,
                    "after_id": page.after[1] if page.after else None,
                    "limit": page.limit + 1,
                },
            )
            return [_reservation_from_row(row) for row in await cur.fetchall()]

        found = await self._read(work)
        more = len(found) > page.limit
        found = found[: page.limit]
        token = encode_page_token(found[-1].created_at.isoformat(), found[-1].id) if more else ""
        return found, token

    # --- expiry --------------------------------------------------------------------------------

    async def expire_due_holds(self, limit: int = 500) -> ExpiryPass:
        """Release up to ``limit`` PENDING holds past their expires_at. Safe with any number of
        expirers at once: each due hold is claimed by one of them (SKIP LOCKED)."""

        async def work(cur: Cursor) -> tuple[ExpiryPass, list[Change]]:
            await cur.execute(EXPIRY["count_due_holds"])
            counted = await cur.fetchone()
            assert counted is not None
            checked = int(counted["due"])
            now: datetime = counted["db_now"]
            await cur.execute(EXPIRY["claim_due_holds"], {"limit": limit, "now": now})
            claimed = await cur.fetchall()
            if not claimed:
                return ExpiryPass(0, checked), []
            event_ids = sorted({str(row["event_id"]) for row in claimed})
            await cur.execute(EXPIRY["lock_events"], {"ids": event_ids})
            events = {str(row["id"]): event_from_row(row) for row in await cur.fetchall()}
            changes: list[Change] = []
            expired: list[Reservation] = []
            for row in claimed:
                lapsed = _reservation_from_row(row)
                event, reservation, change = holds.expire_hold(events[lapsed.event_id], lapsed, now)
                events[event.id] = event
                expired.append(reservation)
                changes.append(change)
            await _update_reservations(cur, expired)
            await cur.executemany(
                HOLDS["update_event_counters"], [_counter_params(e, now) for e in events.values()]
            )
            return ExpiryPass(len(expired), max(checked, len(expired))), changes

        return await self._write(work)

    async def seconds_until_next_expiry(self) -> float | None:
        async def work(cur: Cursor) -> float | None:
            await cur.execute(EXPIRY["seconds_until_next_expiry"])
            row = await cur.fetchone()
            return None if row is None or row["seconds"] is None else float(row["seconds"])

        return await self._read(work)

    # --- plumbing ------------------------------------------------------------------------------

    async def _change_hold(
        self,
        reservation_id: str,
        token: str | None,
        action: Callable[[Event, Reservation, datetime], tuple[Event, Reservation, Change] | None],
    ) -> Reservation:
        async def work(cur: Cursor) -> tuple[Reservation, list[Change]]:
            reservation, now = await self._lock_reservation(cur, reservation_id, token)
            await cur.execute(HOLDS["lock_event"], {"id": reservation.event_id})
            row = await cur.fetchone()
            assert row is not None, "reservations reference their event"
            outcome = action(event_from_row(row), reservation, now)
            if outcome is None:  # an idempotent retry: nothing to change
                return reservation, []
            event, changed, change = outcome
            await _update_reservations(cur, [changed])
            await cur.execute(HOLDS["update_event_counters"], _counter_params(event, now))
            return changed, [change]

        return await self._write(work)

    async def _lock_reservation(
        self, cur: Cursor, reservation_id: str, token: str | None
    ) -> tuple[Reservation, datetime]:
        await cur.execute(HOLDS["lock_reservation"], {"id": reservation_id})
        row = await cur.fetchone()
        if row is None:
            raise errors.ReservationNotFound(reservation_id)
        if token is not None:
            self.tokens.check(reservation_id, token)
        return _reservation_from_row(row), row["db_now"]

    async def _write(
        self,
        work: Callable[[Cursor], Awaitable[tuple[T, list[Change]]]],
        retry_on: tuple[type[Exception], ...] = TRANSIENT,
    ) -> T:
        """Run ``work`` in one transaction and write its changes to the outbox in it."""

        async def transaction(cur: Cursor) -> tuple[T, list[Change]]:
            result, changes = await work(cur)
            if changes:
                await cur.execute(
                    HOLDS["insert_outbox"],
                    {
                        "event_ids": [c.event.id for c in changes],
                        "payloads": [change_to_proto(c).SerializeToString() for c in changes],
                    },
                )
                if self._notify:
                    await cur.execute(HOLDS["notify_outbox"])
            return result, changes

        result, changes = await self._run(transaction, retry_on)
        if changes:
            self._on_commit()
        return result

    async def _read(self, work: Callable[[Cursor], Awaitable[T]]) -> T:
        return await self._run(work, TRANSIENT)

    async def _run(
        self, work: Callable[[Cursor], Awaitable[T]], retry_on: tuple[type[Exception], ...]
    ) -> T:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(retry_on),
                stop=stop_after_attempt(4),
                wait=wait_random_exponential(multiplier=0.02, max=0.5),
                reraise=True,
            ):
                with attempt:
                    async with self.pool.connection() as conn, conn.transaction():
                        return await work(conn.cursor(row_factory=dict_row))
        except pg_errors.CheckViolation as error:
            # Only reachable through a bug above: the database refused to oversell.
            log.error("database refused a change: %s", error)
            raise errors.WrongHoldState("the database refused this change (seat counts)") from error
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise errors.DatabaseUnavailable(type(error).__name__) from error
        raise AssertionError("unreachable")


# --- rows <-> domain ----------------------------------------------------------------------------


async def _db_now(cur: Cursor) -> datetime:
    await cur.execute("SELECT clock_timestamp() AS now")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


async def _find_by_keys(cur: Cursor, requests: Sequence[HoldRequest]) -> dict[str, Reservation]:
    keys = [r.idempotency_key for r in requests if r.idempotency_key is not None]
    if not keys:
        return {}
    await cur.execute(HOLDS["find_by_idempotency_keys"], {"keys": keys})
    return {row["idempotency_key"]: _reservation_from_row(row) for row in await cur.fetchall()}


async def _update_reservations(cur: Cursor, reservations: Sequence[Reservation]) -> None:
    if reservations:
        await cur.executemany(
            HOLDS["update_reservation"], [_reservation_params(r) for r in reservations]
        )


def event_from_row(row: DictRow) -> Event:
    return Event(
        id=str(row["id"]),
        code=row["code"],
        experience_title=row["experience_title"],
        local_date=row["local_date"],
        local_start_time=row["local_start_time"],
        time_zone=row["time_zone"],
        starts_at=row["starts_at"],
        capacity=row["capacity"],
        status=EventStatus(row["status"]),
        experience_only_enabled=row["experience_only_enabled"],
        dinner_price=Money(row["dinner_price"], row["currency"]),
        experience_only_price=Money(row["experience_only_price"], row["currency"]),
        paid=row["paid"],
        pending=row["pending"],
        version=row["version"],
    )


def _event_params(event: Event, now: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "code": event.code,
        "experience_title": event.experience_title,
        "local_date": event.local_date,
        "local_start_time": event.local_start_time,
        "time_zone": event.time_zone,
        "starts_at": event.starts_at,
        "capacity": event.capacity,
        "status": event.status.value,
        "experience_only_enabled": event.experience_only_enabled,
        "currency": event.dinner_price.currency,
        "dinner_price": event.dinner_price.amount,
        "experience_only_price": event.experience_only_price.amount,
        "paid": event.paid,
        "pending": event.pending,
        "version": event.version,
        "now": now,
    }


def _counter_params(event: Event, now: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "paid": event.paid,
        "pending": event.pending,
        "version": event.version,
        "now": now,
    }


def _reservation_from_row(row: DictRow) -> Reservation:
    payment = None
    if row["provider_order_id"] is not None:
        payment = PaymentAttempt(
            provider_order_id=row["provider_order_id"] or "",
            virtual_account_number=row["virtual_account_number"] or "",
            qr_code=row["qr_code"] or "",
            qr_code_url=row["qr_code_url"] or "",
        )
    return Reservation(
        id=str(row["id"]),
        event_id=str(row["event_id"]),
        quantity=row["quantity"],
        ticket_type=TicketType(row["ticket_type"]),
        status=ReservationStatus(row["status"]),
        customer_ref=row["customer_ref"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        payment=payment,
        payment_reference=row["payment_reference"],
        idempotency_key=row["idempotency_key"],
        request_fingerprint=row["request_fingerprint"],
    )


def _new_holds_params(placed: Sequence[Reservation]) -> dict[str, Any]:
    """Array parameters for insert_reservations: holds placed in one batch share their event and
    their clock (created_at, expires_at)."""
    first = placed[0]
    assert all(r.event_id == first.event_id and r.created_at == first.created_at for r in placed)
    return {
        "event_id": first.event_id,
        "now": first.created_at,
        "expires_at": first.expires_at,
        "ids": [r.id for r in placed],
        "quantities": [r.quantity for r in placed],
        "ticket_types": [r.ticket_type.value for r in placed],
        "customer_refs": [r.customer_ref for r in placed],
        "idempotency_keys": [r.idempotency_key for r in placed],
        "request_fingerprints": [r.request_fingerprint for r in placed],
    }


def _reservation_params(reservation: Reservation) -> dict[str, Any]:
    payment = reservation.payment
    return {
        "id": reservation.id,
        "event_id": reservation.event_id,
        "quantity": reservation.quantity,
        "ticket_type": reservation.ticket_type.value,
        "status": reservation.status.value,
        "customer_ref": reservation.customer_ref,
        "idempotency_key": reservation.idempotency_key,
        "request_fingerprint": reservation.request_fingerprint,
        "created_at": reservation.created_at,
        "updated_at": reservation.updated_at,
        "expires_at": reservation.expires_at,
        "payment_reference": reservation.payment_reference,
        "provider_order_id": payment.provider_order_id if payment else None,
        "virtual_account_number": payment.virtual_account_number if payment else None,
        "qr_code": payment.qr_code if payment else None,
        "qr_code_url": payment.qr_code_url if payment else None,
    }


# --- page tokens --------------------------------------------------------------------------------


def encode_page_token(sort_key: str, last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([sort_key, last_id]).encode()).decode()


def decode_page_token(token: str) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        sort_key, last_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        datetime.fromisoformat(sort_key)
        uuid.UUID(last_id)
        return str(sort_key), str(last_id)
    except (ValueError, TypeError) as error:
        raise errors.InvalidField("page_token", "not a token this service issued") from error
