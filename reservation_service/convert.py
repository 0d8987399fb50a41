"""Domain <-> slotlock.v1 protobuf, at the edge. The domain modules never import *_pb2."""

from __future__ import annotations

import functools
from datetime import date, datetime, time

from google.protobuf.timestamp_pb2 import Timestamp

from reservation_service import errors
from reservation_service.holds import (
    DEFAULT_CURRENCY,
    DEFAULT_TIME_ZONE,
    Change,
    ChangeType,
    Event,
    EventOverrides,
    EventSpec,
    EventStatus,
    HistoryEntry,
    HoldRequest,
    Money,
    PaymentAttempt,
    Reservation,
    ReservationStatus,
    TicketType,
)
from slotlock.ids import parse_uuid
from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2

EVENT_STATUS_TO_PROTO: dict[EventStatus, catalog_pb2.EventStatus.ValueType] = {
    EventStatus.SCHEDULED: catalog_pb2.EVENT_STATUS_SCHEDULED,
    EventStatus.CANCELLED: catalog_pb2.EVENT_STATUS_CANCELLED,
    EventStatus.SOLD_OUT: catalog_pb2.EVENT_STATUS_SOLD_OUT,
}
EVENT_STATUS_FROM_PROTO = {v: k for k, v in EVENT_STATUS_TO_PROTO.items()}
TICKET_TYPE_TO_PROTO: dict[TicketType, catalog_pb2.TicketType.ValueType] = {
    TicketType.DINNER: catalog_pb2.TICKET_TYPE_DINNER,
    TicketType.EXPERIENCE_ONLY: catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY,
}
TICKET_TYPE_FROM_PROTO = {v: k for k, v in TICKET_TYPE_TO_PROTO.items()}
RESERVATION_STATUS_TO_PROTO: dict[ReservationStatus, catalog_pb2.ReservationStatus.ValueType] = {
    ReservationStatus.PENDING: catalog_pb2.RESERVATION_STATUS_PENDING,
    ReservationStatus.PAID: catalog_pb2.RESERVATION_STATUS_PAID,
    ReservationStatus.CANCELLED: catalog_pb2.RESERVATION_STATUS_CANCELLED,
    ReservationStatus.EXPIRED: catalog_pb2.RESERVATION_STATUS_EXPIRED,
    ReservationStatus.REFUNDED: catalog_pb2.RESERVATION_STATUS_REFUNDED,
    ReservationStatus.PAYMENT_TO_REFUND: catalog_pb2.RESERVATION_STATUS_PAYMENT_TO_REFUND,
}
RESERVATION_STATUS_FROM_PROTO = {v: k for k, v in RESERVATION_STATUS_TO_PROTO.items()}
CHANGE_TYPE_TO_PROTO: dict[ChangeType, changes_pb2.ChangeType.ValueType] = {
    ChangeType.EVENT_UPSERTED: changes_pb2.CHANGE_TYPE_EVENT_UPSERTED,
    ChangeType.HOLD_CREATED: changes_pb2.CHANGE_TYPE_HOLD_CREATED,
    ChangeType.HOLD_CONFIRMED: changes_pb2.CHANGE_TYPE_HOLD_CONFIRMED,
    ChangeType.HOLD_RELEASED: changes_pb2.CHANGE_TYPE_HOLD_RELEASED,
    ChangeType.HOLD_EXPIRED: changes_pb2.CHANGE_TYPE_HOLD_EXPIRED,
    ChangeType.RESERVATION_REFUNDED: changes_pb2.CHANGE_TYPE_RESERVATION_REFUNDED,
    ChangeType.HOLD_EXTENDED: changes_pb2.CHANGE_TYPE_HOLD_EXTENDED,
    ChangeType.PAYMENT_ATTEMPT_RECORDED: changes_pb2.CHANGE_TYPE_PAYMENT_ATTEMPT_RECORDED,
    ChangeType.PAYMENT_TO_REFUND: changes_pb2.CHANGE_TYPE_PAYMENT_TO_REFUND,
}


def timestamp(moment: datetime) -> Timestamp:
    seconds, nanos = _seconds_and_nanos(moment)
    return Timestamp(seconds=seconds, nanos=nanos)


@functools.lru_cache(maxsize=1024)
def _seconds_and_nanos(moment: datetime) -> tuple[int, int]:
    """Timestamp.FromDatetime is slow (pure Python, ~2 us); the holds of a batch share their
    clock (created_at, updated_at, expires_at, occurred_at), so each moment is converted once."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp.seconds, stamp.nanos


# What a seat change leaves alone, converted once per event and state of it: the changes of a
# batch each carry their event as it stood after them, differing only in the counters.
_UNCHANGING: dict[str, tuple[tuple[object, ...], catalog_pb2.Event]] = {}
_MAX_UNCHANGING = 4096


def event_to_proto(event: Event) -> catalog_pb2.Event:
    key = (
        event.code,
        event.experience_title,
        event.local_date,
        event.local_start_time,
        event.time_zone,
        event.starts_at,
        event.capacity,
        event.experience_only_enabled,
        event.dinner_price,
        event.experience_only_price,
        event.overrides,
    )
    cached = _UNCHANGING.get(event.id)
    if cached is None or cached[0] != key:
        if len(_UNCHANGING) >= _MAX_UNCHANGING:
            _UNCHANGING.clear()
        cached = _UNCHANGING[event.id] = (key, _unchanging_part(event))
    message = catalog_pb2.Event()
    message.CopyFrom(cached[1])
    message.status = EVENT_STATUS_TO_PROTO[event.reported_status]
    message.paid = event.paid
    message.pending = event.pending
    message.available = event.available
    message.version = event.version
    if event.next_hold_lapses_at is not None:
        message.next_hold_lapses_at.CopyFrom(timestamp(event.next_hold_lapses_at))
    return message


def _unchanging_part(event: Event) -> catalog_pb2.Event:
    """``event`` as protobuf but for its status, counters, version and next lapse."""
    o = event.overrides
    return catalog_pb2.Event(
        id=event.id,
        code=event.code,
        experience_title=event.experience_title,
        local_date=event.local_date.isoformat(),
        local_start_time=event.local_start_time.strftime("%H:%M"),
        time_zone=event.time_zone,
        starts_at=timestamp(event.starts_at),
        capacity=event.capacity,
        experience_only_enabled=event.experience_only_enabled,
        dinner_price=catalog_pb2.Money(
            amount=event.dinner_price.amount, currency=event.dinner_price.currency
        ),
        experience_only_price=catalog_pb2.Money(
            amount=event.experience_only_price.amount,
            currency=event.experience_only_price.currency,
        ),
        hold_ttl_s=o.hold_ttl_s or 0,
        max_seats_per_hold=o.max_seats_per_hold or 0,
        max_seats_per_customer=o.max_seats_per_customer or 0,
        max_hold_lifetime_s=o.max_hold_lifetime_s or 0,
    )


def reservation_to_proto(reservation: Reservation) -> catalog_pb2.Reservation:
    message = catalog_pb2.Reservation(
        id=reservation.id,
        event_id=reservation.event_id,
        quantity=reservation.quantity,
        ticket_type=TICKET_TYPE_TO_PROTO[reservation.ticket_type],
        status=RESERVATION_STATUS_TO_PROTO[reservation.status],
        customer_ref=reservation.customer_ref,
        created_at=timestamp(reservation.created_at),
        updated_at=timestamp(reservation.updated_at),
        payment_reference=reservation.payment_reference,
        refund_reason=reservation.refund_reason,
        paid_late=reservation.paid_late,
        refunded_quantity=reservation.refunded_quantity,
        extensions=reservation.extensions,
    )
    if reservation.status is ReservationStatus.PENDING:
        message.expires_at.CopyFrom(timestamp(reservation.expires_at))
        if reservation.payment_grace_until is not None:
            message.payment_grace_until.CopyFrom(timestamp(reservation.payment_grace_until))
    if reservation.payment is not None:
        message.payment.CopyFrom(
            catalog_pb2.PaymentAttempt(
                provider_order_id=reservation.payment.provider_order_id,
                virtual_account_number=reservation.payment.virtual_account_number,
                qr_code=reservation.payment.qr_code,
                qr_code_url=reservation.payment.qr_code_url,
            )
        )
    return message


# What a reservation on the feed leaves out: how its buyer pays (the provider's order id, the
# virtual account, the QR code and its URL) and the payment reference. Every consumer of the
# stream, and anyone allowed to read it, would otherwise see them; none needs them (they are
# GetReservation's, for the hold's holder and admin). See README, "What the feed carries".
FIELDS_KEPT_OFF_THE_FEED = ("payment", "payment_reference")


def reservation_on_feed(reservation: Reservation) -> catalog_pb2.Reservation:
    message = reservation_to_proto(reservation)
    message.ClearField("payment")
    message.ClearField("payment_reference")
    return message


def change_to_proto(change: Change) -> changes_pb2.EventChange:
    """The outbox payload. change_id is left 0: the relay appends the outbox row id."""
    message = changes_pb2.EventChange(
        type=CHANGE_TYPE_TO_PROTO[change.type],
        event=event_to_proto(change.event),
        occurred_at=timestamp(change.occurred_at),
    )
    if change.reservation is not None:
        message.reservation.CopyFrom(reservation_on_feed(change.reservation))
    if change.type is ChangeType.RESERVATION_REFUNDED:
        message.refunded_seats = change.seats
        message.reason = change.reason
    return message


def history_to_proto(entry: HistoryEntry) -> reservation_pb2.HistoryEntry:
    message = reservation_pb2.HistoryEntry(
        id=entry.id,
        event_id=entry.event_id,
        reservation_id=entry.reservation_id,
        occurred_at=timestamp(entry.occurred_at),
        actor=entry.actor,
        change_type=entry.change_type,
        seats=entry.seats,
        event_version=entry.event_version,
        reason=entry.reason,
        detail=entry.detail,
    )
    if entry.reservation_status is not None:
        message.reservation_status = RESERVATION_STATUS_TO_PROTO[entry.reservation_status]
    return message


# --- requests ---------------------------------------------------------------------------------


def parse_date(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise errors.InvalidField(field, f"expected YYYY-MM-DD, got {value!r}") from error


def parse_optional_date(value: str, field: str) -> date | None:
    return parse_date(value, field) if value else None


def parse_time(value: str, field: str) -> time:
    try:
        parsed = time.fromisoformat(value)
    except ValueError as error:
        raise errors.InvalidField(field, f"expected HH:MM, got {value!r}") from error
    if parsed.tzinfo is not None:
        raise errors.InvalidField(field, "a local time without offset, e.g. 19:00")
    return parsed


def money_from_proto(message: catalog_pb2.Money, default_currency: str) -> Money:
    currency = message.currency.strip().upper() or default_currency
    if len(currency) != 3 or not currency.isalpha():
        raise errors.InvalidField(
            "currency", f"expected an ISO 4217 code like VND, got {currency!r}"
        )
    return Money(amount=message.amount, currency=currency)


def event_spec_from_proto(request: reservation_pb2.UpsertEventRequest) -> EventSpec:
    if request.status not in (catalog_pb2.EVENT_STATUS_UNSPECIFIED, *EVENT_STATUS_FROM_PROTO):
        raise errors.InvalidField("status", f"unknown value {request.status}")
    if not request.local_date:
        raise errors.InvalidField("local_date", "is required (YYYY-MM-DD)")
    if not request.local_start_time:
        raise errors.InvalidField("local_start_time", "is required (HH:MM)")
    currency = (
        request.dinner_price.currency or request.experience_only_price.currency or DEFAULT_CURRENCY
    )
    return EventSpec(
        code=request.code.strip(),
        experience_title=request.experience_title.strip(),
        local_date=parse_date(request.local_date, "local_date"),
        local_start_time=parse_time(request.local_start_time, "local_start_time"),
        time_zone=request.time_zone.strip() or DEFAULT_TIME_ZONE,
        capacity=request.capacity,
        status=EVENT_STATUS_FROM_PROTO.get(request.status),
        experience_only_enabled=request.experience_only_enabled,
        dinner_price=money_from_proto(request.dinner_price, currency.upper()),
        experience_only_price=money_from_proto(request.experience_only_price, currency.upper()),
        overrides=EventOverrides(
            hold_ttl_s=request.hold_ttl_s or None,
            max_seats_per_hold=request.max_seats_per_hold or None,
            max_seats_per_customer=request.max_seats_per_customer or None,
            max_hold_lifetime_s=request.max_hold_lifetime_s or None,
        ),
    )


def hold_request_from_proto(
    request: reservation_pb2.CreateHoldRequest, deadline: float | None = None, actor: str = ""
) -> HoldRequest:
    """``deadline``: when the caller gives up, on the monotonic clock (None: no deadline);
    ``actor``: the caller's subject, for the history."""
    return HoldRequest(
        event_id=parse_uuid(request.event_id, "event_id"),
        quantity=request.quantity,
        ticket_type=ticket_type_from_proto(request.ticket_type),
        customer_ref=request.customer_ref,
        idempotency_key=request.idempotency_key or None,
        deadline=deadline,
        actor=actor,
    )


def ticket_type_from_proto(value: catalog_pb2.TicketType.ValueType) -> TicketType:
    if value == catalog_pb2.TICKET_TYPE_UNSPECIFIED:
        return TicketType.DINNER
    try:
        return TICKET_TYPE_FROM_PROTO[value]
    except KeyError as error:
        raise errors.InvalidField("ticket_type", f"unknown value {value}") from error


def event_status_filter(value: catalog_pb2.EventStatus.ValueType) -> EventStatus | None:
    if value == catalog_pb2.EVENT_STATUS_UNSPECIFIED:
        return None
    try:
        return EVENT_STATUS_FROM_PROTO[value]
    except KeyError as error:
        raise errors.InvalidField("status", f"unknown value {value}") from error


def reservation_status_filter(
    value: catalog_pb2.ReservationStatus.ValueType,
) -> ReservationStatus | None:
    if value == catalog_pb2.RESERVATION_STATUS_UNSPECIFIED:
        return None
    try:
        return RESERVATION_STATUS_FROM_PROTO[value]
    except KeyError as error:
        raise errors.InvalidField("status", f"unknown value {value}") from error


def payment_from_proto(message: catalog_pb2.PaymentAttempt) -> PaymentAttempt:
    """The attempt as sent; ``holds.validate_payment_attempt`` judges it."""
    return PaymentAttempt(
        provider_order_id=message.provider_order_id,
        virtual_account_number=message.virtual_account_number,
        qr_code=message.qr_code,
        qr_code_url=message.qr_code_url,
    )


def change_payload(change: Change) -> bytes:
    """The outbox row's payload for ``change`` (the store gets this injected)."""
    return change_to_proto(change).SerializeToString()
