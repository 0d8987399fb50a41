"""Rows <-> domain: how an event or a reservation is laid out in Postgres, in one place. Used by
the store and by the outbox relay (which reads event rows to repair the feed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reservation_service.holds import (
    Event,
    EventStatus,
    Money,
    PaymentAttempt,
    Reservation,
    ReservationStatus,
    TicketType,
)

Row = Mapping[str, Any]  # a row as psycopg's dict_row gives it
Params = dict[str, object]


def event_from_row(row: Row) -> Event:
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


def event_params(event: Event, now: datetime) -> Params:
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


def counter_params(event: Event, now: datetime) -> Params:
    return {
        "id": event.id,
        "paid": event.paid,
        "pending": event.pending,
        "version": event.version,
        "now": now,
    }


def reservation_from_row(row: Row) -> Reservation:
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
        refund_reason=row["refund_reason"],
    )


def new_holds_params(placed: Sequence[Reservation]) -> Params:
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


def reservation_params(reservation: Reservation) -> Params:
    """What update_reservation may change: status, payment details, timestamps, refund reason."""
    payment = reservation.payment
    return {
        "id": reservation.id,
        "status": reservation.status.value,
        "updated_at": reservation.updated_at,
        "payment_reference": reservation.payment_reference,
        "provider_order_id": payment.provider_order_id if payment else None,
        "virtual_account_number": payment.virtual_account_number if payment else None,
        "qr_code": payment.qr_code if payment else None,
        "qr_code_url": payment.qr_code_url if payment else None,
        "refund_reason": reservation.refund_reason,
    }
