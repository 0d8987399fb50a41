"""The hold rules: pure functions over frozen dataclasses, no I/O. Time comes in as ``now``.

Every rule lives here once. The ``validate_*`` functions judge a request on its own (the
application calls them before anything touches the database or a batch); the functions that change
seats judge it against the current state and return the event's new state (version bumped by one)
and the changed reservation; the store persists both and writes one outbox message per change.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reservation_service import errors
from slotlock.errors import SlotlockError

DEFAULT_TIME_ZONE = "Asia/Ho_Chi_Minh"
DEFAULT_CURRENCY = "VND"


class EventStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    CANCELLED = "CANCELLED"
    SOLD_OUT = "SOLD_OUT"  # sales closed by an operator


class TicketType(StrEnum):
    DINNER = "DINNER"
    EXPERIENCE_ONLY = "EXPERIENCE_ONLY"


class ReservationStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REFUNDED = "REFUNDED"


class ChangeType(StrEnum):
    EVENT_UPSERTED = "EVENT_UPSERTED"
    HOLD_CREATED = "HOLD_CREATED"
    HOLD_CONFIRMED = "HOLD_CONFIRMED"
    HOLD_RELEASED = "HOLD_RELEASED"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    RESERVATION_REFUNDED = "RESERVATION_REFUNDED"


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str


@dataclass(frozen=True)
class Event:
    id: str
    code: str
    experience_title: str
    local_date: date
    local_start_time: time
    time_zone: str
    starts_at: datetime
    capacity: int
    status: EventStatus
    experience_only_enabled: bool
    dinner_price: Money
    experience_only_price: Money
    paid: int = 0
    pending: int = 0
    version: int = 1

    @property
    def available(self) -> int:
        return max(0, self.capacity - self.paid - self.pending)

    @property
    def reported_status(self) -> EventStatus:
        """What listings see: a scheduled event with every seat paid or held reads SOLD_OUT.
        Postgres keeps the same rule as the generated column events.reported_status (migration
        0002), which ListEvents filters on; an integration test holds the two together."""
        if self.status is EventStatus.SCHEDULED and self.available == 0:
            return EventStatus.SOLD_OUT
        return self.status


@dataclass(frozen=True)
class EventSpec:
    """What an operator sets with UpsertEvent; validated by ``validate_event_spec``."""

    code: str
    experience_title: str
    local_date: date
    local_start_time: time
    time_zone: str
    capacity: int
    status: EventStatus | None  # None: SCHEDULED on create, unchanged on update
    experience_only_enabled: bool
    dinner_price: Money
    experience_only_price: Money

    @property
    def starts_at(self) -> datetime:
        local = datetime.combine(self.local_date, self.local_start_time)
        return local.replace(tzinfo=ZoneInfo(self.time_zone))


@dataclass(frozen=True)
class PaymentAttempt:
    provider_order_id: str = ""
    virtual_account_number: str = ""
    qr_code: str = ""
    qr_code_url: str = ""


@dataclass(frozen=True)
class HoldRequest:
    event_id: str
    quantity: int
    ticket_type: TicketType
    customer_ref: str
    idempotency_key: str | None
    # When the caller gives up, on this process's monotonic clock (None: never). Not part of the
    # request's identity (the fingerprint): a retry comes with a deadline of its own.
    deadline: float | None = None

    @property
    def fingerprint(self) -> str:
        """Identifies the request behind an idempotency key (same key + same request = retry)."""
        parts = (self.event_id, str(self.quantity), self.ticket_type.value, self.customer_ref)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    id: str
    event_id: str
    quantity: int
    ticket_type: TicketType
    status: ReservationStatus
    customer_ref: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    payment: PaymentAttempt | None = None
    payment_reference: str = ""
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    refund_reason: str = ""


# A request's own outcome in a batch of holds: its reservation, or the error that refused it.
HoldOutcome = Reservation | SlotlockError


@dataclass(frozen=True)
class Change:
    """One committed change: becomes one outbox row and one JetStream message."""

    type: ChangeType
    event: Event  # state after the change
    reservation: Reservation | None
    occurred_at: datetime


@dataclass(frozen=True)
class ExpiryPass:
    """What one expiry pass did: holds released, and how many were due when it started."""

    released: int
    checked: int


@dataclass(frozen=True)
class HoldPolicy:
    ttl: timedelta = timedelta(seconds=300)
    max_seats_per_hold: int = 10


# --- validation -------------------------------------------------------------------------------


def validate_hold_request(request: HoldRequest, policy: HoldPolicy) -> None:
    if request.quantity < 1:
        raise errors.InvalidField("quantity", f"must be at least 1, got {request.quantity}")
    if request.quantity > policy.max_seats_per_hold:
        raise errors.InvalidField(
            "quantity",
            f"at most {policy.max_seats_per_hold} seats per hold, got {request.quantity}",
        )


def validate_payment_attempt(attempt: PaymentAttempt) -> None:
    if not attempt.provider_order_id.strip():
        raise errors.InvalidField("payment.provider_order_id", "is required")


def validate_payment_reference(payment_reference: str) -> str:
    """The reference without surrounding blanks, or InvalidField when there is none."""
    if not payment_reference.strip():
        raise errors.InvalidField("payment_reference", "is required")
    return payment_reference.strip()


def validate_event_spec(spec: EventSpec) -> None:
    if not spec.code.strip():
        raise errors.InvalidField("code", "is required, e.g. DS-2026-12-24-1900")
    if not spec.experience_title.strip():
        raise errors.InvalidField("experience_title", "is required")
    if spec.capacity < 0:
        raise errors.InvalidField("capacity", f"must be 0 or more, got {spec.capacity}")
    if spec.capacity > 1_000_000:
        raise errors.InvalidField("capacity", "at most 1,000,000 seats")
    try:
        ZoneInfo(spec.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise errors.InvalidField(
            "time_zone", f"unknown time zone {spec.time_zone!r}, e.g. Asia/Ho_Chi_Minh"
        ) from error
    _require_representable_start(spec)
    for name, money in (
        ("dinner_price", spec.dinner_price),
        ("experience_only_price", spec.experience_only_price),
    ):
        if money.amount < 0:
            raise errors.InvalidField(name, "amount must be 0 or more")
    if spec.dinner_price.currency != spec.experience_only_price.currency:
        raise errors.InvalidField("experience_only_price", "currency must match dinner_price")


# The instants an event may start at, in UTC: a day inside what datetime (and a protobuf
# Timestamp) can hold, so that the start can be shown in any time zone (offsets stay within a day).
EARLIEST_START = datetime(1, 1, 2, tzinfo=UTC)
LATEST_START = datetime(9999, 12, 31, tzinfo=UTC)


def _require_representable_start(spec: EventSpec) -> None:
    when = f"{spec.local_date.isoformat()} {spec.local_start_time.strftime('%H:%M')}"
    refused = errors.InvalidField(
        "local_date",
        f"{when} in {spec.time_zone} is outside the supported range "
        f"(a start between {EARLIEST_START:%Y-%m-%d} and {LATEST_START:%Y-%m-%d} in UTC)",
    )
    try:
        starts_at = spec.starts_at.astimezone(UTC)
    except (OverflowError, ValueError):
        raise refused from None
    if not EARLIEST_START <= starts_at < LATEST_START:
        raise refused


# --- event changes ----------------------------------------------------------------------------


def create_event(spec: EventSpec, event_id: str, now: datetime) -> tuple[Event, Change]:
    """A new event from a spec that passed ``validate_event_spec``."""
    event = Event(
        id=event_id,
        code=spec.code,
        experience_title=spec.experience_title,
        local_date=spec.local_date,
        local_start_time=spec.local_start_time,
        time_zone=spec.time_zone,
        starts_at=spec.starts_at,
        capacity=spec.capacity,
        status=spec.status or EventStatus.SCHEDULED,
        experience_only_enabled=spec.experience_only_enabled,
        dinner_price=spec.dinner_price,
        experience_only_price=spec.experience_only_price,
    )
    return event, Change(ChangeType.EVENT_UPSERTED, event, None, now)


def update_event(event: Event, spec: EventSpec, now: datetime) -> tuple[Event, Change]:
    """Apply an upsert to an existing event. Pending holds of a cancelled event must have been
    released first (``release_hold``), so the capacity check sees what is really taken. The spec
    has passed ``validate_event_spec``."""
    taken = event.paid + event.pending
    if spec.capacity < taken:
        raise errors.CapacityBelowSold(spec.capacity, taken)
    updated = replace(
        event,
        experience_title=spec.experience_title,
        local_date=spec.local_date,
        local_start_time=spec.local_start_time,
        time_zone=spec.time_zone,
        starts_at=spec.starts_at,
        capacity=spec.capacity,
        status=spec.status or event.status,
        experience_only_enabled=spec.experience_only_enabled,
        dinner_price=spec.dinner_price,
        experience_only_price=spec.experience_only_price,
        version=event.version + 1,
    )
    return updated, Change(ChangeType.EVENT_UPSERTED, updated, None, now)


# --- hold changes -----------------------------------------------------------------------------


def place_hold(
    event: Event,
    request: HoldRequest,
    policy: HoldPolicy,
    now: datetime,
    reservation_id: str,
) -> tuple[Event, Reservation, Change]:
    """Lock ``request.quantity`` seats for ``policy.ttl``, or refuse with the reason. The request
    has passed ``validate_hold_request`` before it joined a batch."""
    if event.status is EventStatus.CANCELLED:
        raise errors.EventNotOpen("the event is cancelled")
    if event.status is EventStatus.SOLD_OUT:
        raise errors.EventNotOpen("sales for this event are closed")
    if event.starts_at <= now:
        raise errors.EventStarted()
    if request.ticket_type is TicketType.EXPERIENCE_ONLY and not event.experience_only_enabled:
        raise errors.TicketTypeDisabled()
    if event.available < request.quantity:
        raise errors.NotEnoughSeats(request.quantity, event.available)
    reservation = Reservation(
        id=reservation_id,
        event_id=event.id,
        quantity=request.quantity,
        ticket_type=request.ticket_type,
        status=ReservationStatus.PENDING,
        customer_ref=request.customer_ref,
        created_at=now,
        updated_at=now,
        expires_at=now + policy.ttl,
        idempotency_key=request.idempotency_key,
        request_fingerprint=request.fingerprint if request.idempotency_key else None,
    )
    updated = replace(event, pending=event.pending + request.quantity, version=event.version + 1)
    return updated, reservation, Change(ChangeType.HOLD_CREATED, updated, reservation, now)


def has_given_up(request: HoldRequest, monotonic_now: float) -> bool:
    """Whether the caller's deadline has passed: its hold must not be written."""
    return request.deadline is not None and request.deadline <= monotonic_now


def check_retry(existing: Reservation, request: HoldRequest) -> Reservation:
    """A request whose idempotency key is taken: the same request gets the same hold back."""
    if existing.request_fingerprint != request.fingerprint:
        raise errors.IdempotencyKeyReused()
    return existing


def record_payment_attempt(
    reservation: Reservation, attempt: PaymentAttempt, now: datetime
) -> Reservation:
    _require_live_pending(reservation, now, "record a payment attempt on")
    return replace(reservation, payment=attempt, updated_at=now)


def confirm_hold(
    event: Event, reservation: Reservation, payment_reference: str, now: datetime
) -> tuple[Event, Reservation, Change] | None:
    """PENDING and unexpired -> PAID. Returns None when it is already PAID with this reference
    (an idempotent retry: nothing changes). The reference has passed
    ``validate_payment_reference``."""
    if reservation.status is ReservationStatus.PAID:
        if reservation.payment_reference == payment_reference:
            return None
        raise errors.WrongHoldState("the hold is already paid with another payment reference")
    _require_live_pending(reservation, now, "confirm")
    paid = replace(
        reservation,
        status=ReservationStatus.PAID,
        payment_reference=payment_reference,
        updated_at=now,
    )
    updated = replace(
        event,
        paid=event.paid + reservation.quantity,
        pending=event.pending - reservation.quantity,
        version=event.version + 1,
    )
    return updated, paid, Change(ChangeType.HOLD_CONFIRMED, updated, paid, now)


def release_hold(
    event: Event, reservation: Reservation, now: datetime
) -> tuple[Event, Reservation, Change] | None:
    """PENDING -> CANCELLED, seats back at once. Returns None when there is nothing to release
    (already CANCELLED or EXPIRED: an idempotent retry)."""
    if reservation.status in (ReservationStatus.CANCELLED, ReservationStatus.EXPIRED):
        return None
    if reservation.status is not ReservationStatus.PENDING:
        raise errors.WrongHoldState(
            f"the hold is {reservation.status.value}, not PENDING; a paid hold is refunded instead"
        )
    released = replace(reservation, status=ReservationStatus.CANCELLED, updated_at=now)
    updated = _return_pending(event, reservation.quantity)
    return updated, released, Change(ChangeType.HOLD_RELEASED, updated, released, now)


def expire_hold(
    event: Event, reservation: Reservation, now: datetime
) -> tuple[Event, Reservation, Change]:
    """A PENDING hold past its expires_at -> EXPIRED; its payment details are cleared."""
    if reservation.status is not ReservationStatus.PENDING or reservation.expires_at > now:
        raise errors.WrongHoldState("only a PENDING hold past its expiry can expire")
    expired = replace(reservation, status=ReservationStatus.EXPIRED, payment=None, updated_at=now)
    updated = _return_pending(event, reservation.quantity)
    return updated, expired, Change(ChangeType.HOLD_EXPIRED, updated, expired, now)


def refund_reservation(
    event: Event, reservation: Reservation, now: datetime, reason: str = ""
) -> tuple[Event, Reservation, Change] | None:
    """PAID -> REFUNDED, seats back, the reason kept. Returns None when it is already REFUNDED."""
    if reservation.status is ReservationStatus.REFUNDED:
        return None
    if reservation.status is not ReservationStatus.PAID:
        raise errors.WrongHoldState(
            f"only a PAID reservation can be refunded; this one is {reservation.status.value}"
        )
    refunded = replace(
        reservation, status=ReservationStatus.REFUNDED, refund_reason=reason, updated_at=now
    )
    updated = replace(event, paid=event.paid - reservation.quantity, version=event.version + 1)
    return updated, refunded, Change(ChangeType.RESERVATION_REFUNDED, updated, refunded, now)


def is_lapsed(reservation: Reservation, now: datetime) -> bool:
    return reservation.status is ReservationStatus.PENDING and reservation.expires_at <= now


def _require_live_pending(reservation: Reservation, now: datetime, action: str) -> None:
    if reservation.status is ReservationStatus.EXPIRED or is_lapsed(reservation, now):
        raise errors.HoldExpired()
    if reservation.status is not ReservationStatus.PENDING:
        raise errors.WrongHoldState(
            f"cannot {action} a hold that is {reservation.status.value}, not PENDING"
        )


def _return_pending(event: Event, quantity: int) -> Event:
    return replace(event, pending=event.pending - quantity, version=event.version + 1)


# --- hold tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldTokens:
    """Hold tokens are an HMAC of the reservation id, so none is stored and a retry with the same
    idempotency key can be given its token again. Every replica must share the secret.

    Two checks at two moments: ``require`` before any lookup (a request without a token is
    malformed), ``check`` once the reservation is found (an unknown id reads NOT_FOUND, not
    PERMISSION_DENIED).

    Rotation: ``previous`` secrets are still accepted, never used to sign. Roll a new secret out
    in three steps so no replica refuses a token another one issued: accept it (``old,new``),
    sign with it (``new,old``), then drop the old one once the holds it signed have ended."""

    secret: bytes
    previous: tuple[bytes, ...] = ()

    def token_for(self, reservation_id: str) -> str:
        return _hmac(self.secret, reservation_id)

    @staticmethod
    def require(token: str) -> None:
        if not token:
            raise errors.InvalidField("hold_token", "is required (returned by CreateHold)")

    def check(self, reservation_id: str, token: str) -> None:
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a "no").
        given = token.encode("utf-8", "surrogatepass")
        # Every secret is compared (no early exit), so timing does not tell which one matched.
        matches = [
            hmac.compare_digest(_hmac(secret, reservation_id).encode(), given)
            for secret in (self.secret, *self.previous)
        ]
        if not any(matches):
            raise errors.WrongHoldToken()


def _hmac(secret: bytes, reservation_id: str) -> str:
    return hmac.new(secret, reservation_id.encode(), hashlib.sha256).hexdigest()
