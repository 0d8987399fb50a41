"""Rows <-> domain: how an event or a reservation is laid out in Postgres, in one place. Used by
the store and by the outbox relay (which reads event rows to repair the feed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reservation_service.holds import (
    Change,
    Event,
    EventOverrides,
    EventStatus,
    HistoryEntry,
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
        overrides=EventOverrides(
            hold_ttl_s=row["hold_ttl_s"],
            max_seats_per_hold=row["max_seats_per_hold"],
            max_seats_per_customer=row["max_seats_per_customer"],
            max_hold_lifetime_s=row["max_hold_lifetime_s"],
        ),
        next_hold_lapses_at=row.get("next_hold_lapses_at"),
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
        "hold_ttl_s": event.overrides.hold_ttl_s,
        "max_seats_per_hold": event.overrides.max_seats_per_hold,
        "max_seats_per_customer": event.overrides.max_seats_per_customer,
        "max_hold_lifetime_s": event.overrides.max_hold_lifetime_s,
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
        extensions=row["extensions"],
        payment_grace_until=row["payment_grace_until"],
        paid_late=row["paid_late"],
        refunded_quantity=row["refunded_quantity"],
    )


def reservation_params(reservation: Reservation) -> Params:
    """What update_reservations may change of one reservation: status, payment details,
    timestamps, deadline and grace, extensions, refunds."""
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
        "expires_at": reservation.expires_at,
        "payment_grace_until": reservation.payment_grace_until,
        "extensions": reservation.extensions,
        "paid_late": reservation.paid_late,
        "refunded_quantity": reservation.refunded_quantity,
    }


def reservations_params(reservations: Sequence[Reservation]) -> Params:
    """Array parameters for batches.sql update_reservations: each of ``reservation_params``,
    as one array over ``reservations``."""
    each = [reservation_params(r) for r in reservations]
    return {key: [params[key] for params in each] for key in each[0]} if each else {}


def history_params(changes: Sequence[Change], default_actor: str) -> Params:
    """Array parameters for the history rows written beside the outbox rows (one per change)."""
    return {
        "h_event_ids": [c.event.id for c in changes],
        "h_reservation_ids": [c.reservation.id if c.reservation else None for c in changes],
        "h_occurred_at": [c.occurred_at for c in changes],
        "h_actors": [(c.actor or default_actor)[:500] for c in changes],
        "h_types": [c.type.value for c in changes],
        "h_statuses": [c.reservation.status.value if c.reservation else None for c in changes],
        "h_seats": [c.seats for c in changes],
        "h_versions": [c.event.version for c in changes],
        "h_reasons": [c.reason[:500] for c in changes],
        "h_details": [c.detail[:1000] for c in changes],
    }


def history_from_row(row: Row) -> HistoryEntry:
    return HistoryEntry(
        id=row["id"],
        event_id=str(row["event_id"]),
        reservation_id=str(row["reservation_id"]) if row["reservation_id"] else "",
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        change_type=row["change_type"],
        reservation_status=(
            ReservationStatus(row["reservation_status"]) if row["reservation_status"] else None
        ),
        seats=row["seats"],
        event_version=row["event_version"],
        reason=row["reason"],
        detail=row["detail"],
    )


def holds_params(placed: Sequence[Reservation]) -> Params:
    """Array parameters for batches.sql insert_holds: holds of any events, sharing a clock."""
    return {
        "now": placed[0].created_at,
        "ids": [r.id for r in placed],
        "event_ids": [r.event_id for r in placed],
        "quantities": [r.quantity for r in placed],
        "ticket_types": [r.ticket_type.value for r in placed],
        "customer_refs": [r.customer_ref for r in placed],
        "idempotency_keys": [r.idempotency_key for r in placed],
        "request_fingerprints": [r.request_fingerprint for r in placed],
        "expires_at": [r.expires_at for r in placed],
    }


def counters_params(events: Sequence[Event], now: datetime) -> Params:
    """Array parameters for batches.sql update_events_counters."""
    return {
        "ids": [e.id for e in events],
        "paid": [e.paid for e in events],
        "pending": [e.pending for e in events],
        "versions": [e.version for e in events],
        "now": now,
    }
