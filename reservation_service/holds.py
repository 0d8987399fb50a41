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
    # A late payment found no seats to take again: recorded, to be refunded. Holds no seats.
    PAYMENT_TO_REFUND = "PAYMENT_TO_REFUND"


class ChangeType(StrEnum):
    EVENT_UPSERTED = "EVENT_UPSERTED"
    HOLD_CREATED = "HOLD_CREATED"
    HOLD_CONFIRMED = "HOLD_CONFIRMED"
    HOLD_RELEASED = "HOLD_RELEASED"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    RESERVATION_REFUNDED = "RESERVATION_REFUNDED"
    HOLD_EXTENDED = "HOLD_EXTENDED"
    PAYMENT_ATTEMPT_RECORDED = "PAYMENT_ATTEMPT_RECORDED"
    PAYMENT_TO_REFUND = "PAYMENT_TO_REFUND"


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str


@dataclass(frozen=True)
class EventOverrides:
    """An event's own hold settings, set by UpsertEvent; None: the service's setting applies."""

    hold_ttl_s: int | None = None
    max_seats_per_hold: int | None = None
    max_seats_per_customer: int | None = None
    max_hold_lifetime_s: int | None = None


NO_OVERRIDES = EventOverrides()


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
    overrides: EventOverrides = NO_OVERRIDES
    # When its first PENDING hold lapses; read by GetEvent only (None elsewhere).
    next_hold_lapses_at: datetime | None = None

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
    overrides: EventOverrides = NO_OVERRIDES

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
    # Who asks (the authenticated caller's subject), for the history; not part of the identity.
    actor: str = ""

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
    extensions: int = 0  # times ExtendHold pushed expires_at out
    # Payment in progress: the hold does not lapse before this (one grace period).
    payment_grace_until: datetime | None = None
    paid_late: bool = False  # PAID by a ConfirmHold after it had lapsed
    refunded_quantity: int = 0

    @property
    def lapses_at(self) -> datetime:
        """When a PENDING hold really lapses: its deadline, or the end of its payment grace.
        The database keeps the same rule as the generated column reservations.lapses_at."""
        return self.payment_grace_until or self.expires_at

    @property
    def seats(self) -> int:
        """Seats it holds or has paid for now (a partial refund gives some back)."""
        return self.quantity - self.refunded_quantity


# A request's own outcome in a batch of holds: its reservation, or the error that refused it.
HoldOutcome = Reservation | SlotlockError


@dataclass(frozen=True)
class Change:
    """One committed change: becomes one outbox row and one JetStream message."""

    type: ChangeType
    event: Event  # state after the change
    reservation: Reservation | None
    occurred_at: datetime
    # For the history (and, for refunds, the feed): who, why, and how many seats it concerned.
    actor: str = ""  # "" = the use case's caller (the store fills it in)
    reason: str = ""
    seats: int = 0
    detail: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    """One row of the history: a change as ListChanges reports it."""

    id: int
    event_id: str
    reservation_id: str  # "" for a change to the event itself
    occurred_at: datetime
    actor: str
    change_type: str
    reservation_status: ReservationStatus | None
    seats: int
    event_version: int
    reason: str
    detail: str


@dataclass(frozen=True)
class ExpiryPass:
    """What one expiry pass did: holds released, and how many were due when it started;
    ``next_lapse_s``: seconds from the pass's clock reading to the earliest PENDING hold it left
    (None: none pending), so the expirer plans its next pass without another query;
    ``db_now``: that clock reading (the database's), against which the expirer sets its own."""

    released: int
    checked: int
    next_lapse_s: float | None = None
    db_now: datetime | None = None


@dataclass(frozen=True)
class HoldPolicy:
    """The service's hold settings; ``for_event`` applies an event's overrides."""

    ttl: timedelta = timedelta(seconds=300)
    max_seats_per_hold: int = 10
    max_seats_per_customer: int = 0  # PENDING + PAID seats per customer per event; 0 = no limit
    extension: timedelta = timedelta(seconds=300)  # ExtendHold's default step
    max_extensions: int = 3
    max_hold_lifetime: timedelta = timedelta(seconds=1800)  # from created_at, extensions included
    payment_grace: timedelta = timedelta(seconds=600)  # after expires_at, once payment started
    late_payments_take_free_seats: bool = True  # False: every late payment is refunded

    def for_event(self, event: Event) -> HoldPolicy:
        o = event.overrides
        if o is NO_OVERRIDES or o == NO_OVERRIDES:  # most events: no copy per hold
            return self
        return replace(
            self,
            ttl=timedelta(seconds=o.hold_ttl_s) if o.hold_ttl_s else self.ttl,
            max_seats_per_hold=o.max_seats_per_hold or self.max_seats_per_hold,
            max_seats_per_customer=o.max_seats_per_customer or self.max_seats_per_customer,
            max_hold_lifetime=(
                timedelta(seconds=o.max_hold_lifetime_s)
                if o.max_hold_lifetime_s
                else self.max_hold_lifetime
            ),
        )


MAX_OVERRIDE_S = 7 * 86400


# --- validation -------------------------------------------------------------------------------


def validate_hold_request(request: HoldRequest, policy: HoldPolicy) -> None:
    """Against the service's policy: an event may lower the seats-per-hold maximum (checked by
    ``place_hold``), never raise it (``validate_overrides``)."""
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
    o = spec.overrides
    for name, value, ceiling in (
        ("hold_ttl_s", o.hold_ttl_s, MAX_OVERRIDE_S),
        ("max_seats_per_hold", o.max_seats_per_hold, 10_000),
        ("max_seats_per_customer", o.max_seats_per_customer, 1_000_000),
        ("max_hold_lifetime_s", o.max_hold_lifetime_s, MAX_OVERRIDE_S),
    ):
        if value is not None and not 1 <= value <= ceiling:
            raise errors.InvalidField(
                name, f"must be 0 (the service's setting) or 1 to {ceiling:,}"
            )


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


def validate_overrides(overrides: EventOverrides, policy: HoldPolicy) -> None:
    """An event may lower the service's seats-per-hold maximum, not raise it: CreateHold
    refuses larger requests before they join a batch, and the page's seat picker stops there."""
    wanted = overrides.max_seats_per_hold
    if wanted is not None and wanted > policy.max_seats_per_hold:
        raise errors.InvalidField(
            "max_seats_per_hold",
            f"at most the service's {policy.max_seats_per_hold} "
            f"(SLOTLOCK_MAX_SEATS_PER_HOLD), got {wanted}",
        )


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
        overrides=spec.overrides,
    )
    return event, Change(ChangeType.EVENT_UPSERTED, event, None, now, detail="created")


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
        overrides=spec.overrides,
        version=event.version + 1,
    )
    return updated, Change(ChangeType.EVENT_UPSERTED, updated, None, now, detail="updated")


# --- hold changes -----------------------------------------------------------------------------


def place_hold(
    event: Event,
    request: HoldRequest,
    policy: HoldPolicy,
    now: datetime,
    reservation_id: str,
    customer_seats: int = 0,
) -> tuple[Event, Reservation, Change]:
    """Lock ``request.quantity`` seats for the event's hold TTL, or refuse with the reason. The
    request has passed ``validate_hold_request`` before it joined a batch; ``customer_seats`` is
    what its customer already holds or has paid for on this event (read only when the event has
    a per-customer limit)."""
    policy = policy.for_event(event)
    if request.quantity > policy.max_seats_per_hold:
        raise errors.InvalidField(
            "quantity",
            f"at most {policy.max_seats_per_hold} seats per hold, got {request.quantity}",
        )
    if event.status is EventStatus.CANCELLED:
        raise errors.EventNotOpen("the event is cancelled")
    if event.status is EventStatus.SOLD_OUT:
        raise errors.EventNotOpen("sales for this event are closed")
    if event.starts_at <= now:
        raise errors.EventStarted()
    if request.ticket_type is TicketType.EXPERIENCE_ONLY and not event.experience_only_enabled:
        raise errors.TicketTypeDisabled()
    limit = policy.max_seats_per_customer
    if limit and request.customer_ref and customer_seats + request.quantity > limit:
        raise errors.CustomerLimitReached(request.quantity, customer_seats, limit)
    if event.available < request.quantity:
        raise errors.NotEnoughSeats(request.quantity, event.available, in_checkout=event.pending)
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
    change = Change(
        ChangeType.HOLD_CREATED, updated, reservation, now, request.actor, seats=request.quantity
    )
    return updated, reservation, change


def customer_limited(event: Event, policy: HoldPolicy) -> bool:
    """Whether placing holds on ``event`` needs its customers' seats (one read per batch)."""
    return bool(policy.for_event(event).max_seats_per_customer)


def explain_refusal(
    refusal: errors.NotEnoughSeats, next_lapse_at: datetime | None, time_zone: str
) -> errors.NotEnoughSeats:
    """A NOT_ENOUGH_SEATS refusal saying, when seats are in checkout, when the first hold lapses
    (``next_lapse_at``, read only on this refusal path)."""
    if not refusal.in_checkout or next_lapse_at is None:
        return refusal
    return errors.NotEnoughSeats(
        refusal.requested,
        refusal.remaining,
        in_checkout=refusal.in_checkout,
        next_lapse_at=next_lapse_at,
        time_zone=time_zone,
    )


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


def record_payment(
    event: Event,
    reservation: Reservation,
    attempt: PaymentAttempt,
    in_progress: bool,
    policy: HoldPolicy,
    now: datetime,
) -> tuple[Event, Reservation, Change]:
    """RecordPaymentAttempt: the attempt kept on the hold; with payment in progress the hold gets
    its one grace period (``policy.payment_grace`` after its deadline, never renewed: a second
    attempt keeps the first grace). No seats move; the change still goes on the feed."""
    recorded = record_payment_attempt(reservation, attempt, now)
    if in_progress and recorded.payment_grace_until is None:
        recorded = replace(recorded, payment_grace_until=recorded.expires_at + policy.payment_grace)
    updated = replace(event, version=event.version + 1)
    detail = (
        f"payment in progress: grace until {recorded.payment_grace_until.isoformat()}"
        if recorded.payment_grace_until
        else "payment attempt recorded"
    )
    change = Change(ChangeType.PAYMENT_ATTEMPT_RECORDED, updated, recorded, now, detail=detail)
    return updated, recorded, change


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
    change = Change(ChangeType.HOLD_CONFIRMED, updated, paid, now, seats=reservation.quantity)
    return updated, paid, change


def confirm_payment(
    event: Event,
    reservation: Reservation,
    payment_reference: str,
    policy: HoldPolicy,
    now: datetime,
) -> tuple[Event, Reservation, Change] | None:
    """ConfirmHold. On time: ``confirm_hold``. Late (the hold lapsed: EXPIRED, or PENDING past
    its deadline and grace) the payment is never lost: it is recorded, and the seats are taken
    again if they are free and sales are open (PAID, ``paid_late``); otherwise the reservation
    becomes PAYMENT_TO_REFUND. Returns None for a retry that changes nothing (already PAID or
    PAYMENT_TO_REFUND with this reference): the caller reads the answer off the reservation."""
    if reservation.status is ReservationStatus.PAYMENT_TO_REFUND:
        if reservation.payment_reference == payment_reference:
            return None
        raise errors.WrongHoldState(
            "the hold lapsed and its late payment awaits a refund; it takes no other payment"
        )
    late = reservation.status is ReservationStatus.EXPIRED or is_lapsed(reservation, now)
    if not late:
        return confirm_hold(event, reservation, payment_reference, now)
    base = event
    if reservation.status is ReservationStatus.PENDING:  # lapsed, not yet released: release it
        base = replace(event, pending=event.pending - reservation.quantity)
    refusal = _late_refusal(base, reservation, policy, now)
    if refusal is None:
        paid = replace(
            reservation,
            status=ReservationStatus.PAID,
            payment_reference=payment_reference,
            paid_late=True,
            updated_at=now,
        )
        updated = replace(base, paid=base.paid + reservation.quantity, version=event.version + 1)
        change = Change(
            ChangeType.HOLD_CONFIRMED,
            updated,
            paid,
            now,
            seats=reservation.quantity,
            detail="late payment: the seats were free and taken again",
        )
        return updated, paid, change
    to_refund = replace(
        reservation,
        status=ReservationStatus.PAYMENT_TO_REFUND,
        payment_reference=payment_reference,
        payment=None,
        updated_at=now,
    )
    updated = replace(base, version=event.version + 1)
    change = Change(
        ChangeType.PAYMENT_TO_REFUND,
        updated,
        to_refund,
        now,
        reason=refusal,
        seats=reservation.quantity,
        detail="late payment recorded; to be refunded",
    )
    return updated, to_refund, change


def _late_refusal(
    event: Event, reservation: Reservation, policy: HoldPolicy, now: datetime
) -> str | None:
    """Why a late payment cannot take its seats again (None: it can)."""
    if not policy.late_payments_take_free_seats:
        return "late payments are refunded (SLOTLOCK_LATE_PAYMENTS_TAKE_FREE_SEATS=false)"
    if event.status is not EventStatus.SCHEDULED:
        return f"the event is {event.status.value}"
    if event.starts_at <= now:
        return "the event has started"
    if event.available < reservation.quantity:
        return (
            f"the hold lapsed and its seats were taken: {reservation.quantity} needed, "
            f"{event.available} free"
        )
    return None


def extension_refusal(
    reservation: Reservation, policy: HoldPolicy, now: datetime
) -> errors.HoldNotExtendable | None:
    """Why a live PENDING hold may not be extended, or None. Every condition is one line here
    (a waitlist will add "others are waiting")."""
    if reservation.extensions >= policy.max_extensions:
        return errors.HoldNotExtendable(
            "MAX_EXTENSIONS",
            f"the hold was already extended {reservation.extensions} times "
            f"(at most {policy.max_extensions})",
        )
    latest = reservation.created_at + policy.max_hold_lifetime
    if reservation.expires_at >= latest:
        return errors.HoldNotExtendable(
            "MAX_LIFETIME",
            f"the hold already runs to its maximum lifetime "
            f"({int(policy.max_hold_lifetime.total_seconds())} s after it was created)",
        )
    return None


def extend_hold(
    event: Event,
    reservation: Reservation,
    extend_by: timedelta | None,
    policy: HoldPolicy,
    now: datetime,
) -> tuple[Event, Reservation, Change]:
    """ExtendHold: push a live PENDING hold's deadline out by ``extend_by`` (None: the default
    step), never past created_at + the maximum lifetime. A payment grace moves with it."""
    _require_live_pending(reservation, now, "extend")
    policy = policy.for_event(event)
    refusal = extension_refusal(reservation, policy, now)
    if refusal is not None:
        raise refusal
    step = extend_by or policy.extension
    latest = reservation.created_at + policy.max_hold_lifetime
    expires_at = min(max(reservation.expires_at, now) + step, latest)
    grace = reservation.payment_grace_until
    if grace is not None:
        grace = expires_at + (grace - reservation.expires_at)
    extended = replace(
        reservation,
        expires_at=expires_at,
        payment_grace_until=grace,
        extensions=reservation.extensions + 1,
        updated_at=now,
    )
    updated = replace(event, version=event.version + 1)
    detail = (
        f"expires_at {reservation.expires_at.isoformat()} -> {expires_at.isoformat()} "
        f"(extension {extended.extensions} of {policy.max_extensions})"
    )
    change = Change(ChangeType.HOLD_EXTENDED, updated, extended, now, detail=detail)
    return updated, extended, change


def release_hold(
    event: Event, reservation: Reservation, now: datetime
) -> tuple[Event, Reservation, Change] | None:
    """PENDING -> CANCELLED, seats back at once; its payment details are cleared, as expiry
    clears them (nothing will be paid on them). Returns None when there is nothing to release
    (already CANCELLED or EXPIRED: an idempotent retry)."""
    if reservation.status in (ReservationStatus.CANCELLED, ReservationStatus.EXPIRED):
        return None
    if reservation.status is not ReservationStatus.PENDING:
        raise errors.WrongHoldState(
            f"the hold is {reservation.status.value}, not PENDING; a paid hold is refunded instead"
        )
    released = replace(
        reservation, status=ReservationStatus.CANCELLED, payment=None, updated_at=now
    )
    updated = _return_pending(event, reservation.quantity)
    change = Change(ChangeType.HOLD_RELEASED, updated, released, now, seats=reservation.quantity)
    return updated, released, change


def expire_hold(
    event: Event, reservation: Reservation, now: datetime
) -> tuple[Event, Reservation, Change]:
    """A PENDING hold past its expires_at (and its payment grace, if any) -> EXPIRED; its payment
    details are cleared."""
    if reservation.status is not ReservationStatus.PENDING or reservation.lapses_at > now:
        raise errors.WrongHoldState("only a PENDING hold past its expiry can expire")
    expired = replace(reservation, status=ReservationStatus.EXPIRED, payment=None, updated_at=now)
    updated = _return_pending(event, reservation.quantity)
    change = Change(
        ChangeType.HOLD_EXPIRED, updated, expired, now, "expirer", seats=reservation.quantity
    )
    return updated, expired, change


def refund_reservation(
    event: Event, reservation: Reservation, now: datetime, reason: str = "", quantity: int = 0
) -> tuple[Event, Reservation, Change] | None:
    """Refund ``quantity`` seats of a PAID reservation (0: every seat not yet refunded); the
    seats return at once, the reason is kept. It stays PAID until every seat is refunded, then
    reads REFUNDED. A PAYMENT_TO_REFUND reservation (no seats) is refunded whole. Returns None
    when there is nothing left to refund (already REFUNDED: an idempotent retry)."""
    if reservation.status is ReservationStatus.REFUNDED:
        return None
    if reservation.status is ReservationStatus.PAYMENT_TO_REFUND:
        if quantity not in (0, reservation.quantity):
            raise errors.InvalidField(
                "quantity", "a late payment awaiting its refund is refunded whole (0)"
            )
        refunded = replace(
            reservation,
            status=ReservationStatus.REFUNDED,
            refunded_quantity=reservation.quantity,
            refund_reason=reason,
            updated_at=now,
        )
        updated = replace(event, version=event.version + 1)
        change = Change(
            ChangeType.RESERVATION_REFUNDED,
            updated,
            refunded,
            now,
            reason=reason,
            seats=reservation.quantity,
            detail="late payment refunded (it held no seats)",
        )
        return updated, refunded, change
    if reservation.status is not ReservationStatus.PAID:
        raise errors.WrongHoldState(
            f"only a PAID reservation can be refunded; this one is {reservation.status.value}"
        )
    left = reservation.seats
    seats = quantity or left
    if not 1 <= seats <= left:
        raise errors.InvalidField(
            "quantity", f"{seats} seats: this reservation has {left} seats left to refund"
        )
    done = reservation.refunded_quantity + seats
    refunded = replace(
        reservation,
        status=ReservationStatus.REFUNDED if done == reservation.quantity else reservation.status,
        refunded_quantity=done,
        refund_reason=reason,
        updated_at=now,
    )
    updated = replace(event, paid=event.paid - seats, version=event.version + 1)
    change = Change(
        ChangeType.RESERVATION_REFUNDED,
        updated,
        refunded,
        now,
        reason=reason,
        seats=seats,
        detail=f"{seats} of {reservation.quantity} seats refunded ({done} in all)",
    )
    return updated, refunded, change


def is_lapsed(reservation: Reservation, now: datetime) -> bool:
    return reservation.status is ReservationStatus.PENDING and reservation.lapses_at <= now


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
