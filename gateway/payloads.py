"""Protobuf messages to the JSON the page reads, and the page's JSON to requests. Kept apart from
the routes so the shapes the browser sees are written down in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from slotlock import client
from slotlock.labels import short_name
from slotlock.v1 import availability_pb2, catalog_pb2, reservation_pb2

# The page and the CLI say "dinner" / "experience-only"; the page also accepts "experience_only".
TICKET_TYPES = {
    **client.TICKET_TYPES,
    **{name.replace("-", "_"): value for name, value in client.TICKET_TYPES.items()},
}


class BadRequest(ValueError):
    """The browser sent JSON the gateway cannot turn into a request (HTTP 400)."""


def timestamp_iso(ts: timestamp_pb2.Timestamp, present: bool = True) -> str | None:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def money(value: catalog_pb2.Money, present: bool) -> dict[str, Any] | None:
    if not present or not value.currency:
        return None
    return {"amount": value.amount, "currency": value.currency}


def availability_json(ev: availability_pb2.EventAvailability) -> dict[str, Any]:
    return {
        "event_id": ev.event_id,
        "code": ev.code,
        "title": ev.experience_title,
        "local_date": ev.local_date,
        "local_start_time": ev.local_start_time,
        "time_zone": ev.time_zone,
        "starts_at": timestamp_iso(ev.starts_at, ev.HasField("starts_at")),
        "capacity": ev.capacity,
        "paid": ev.paid,
        "pending": ev.pending,
        "available": ev.available,
        "status": short_name(catalog_pb2.EventStatus, ev.status, "UNSPECIFIED"),
        "experience_only_enabled": ev.experience_only_enabled,
        "dinner_price": money(ev.dinner_price, ev.HasField("dinner_price")),
        "experience_only_price": money(
            ev.experience_only_price, ev.HasField("experience_only_price")
        ),
        "badge": short_name(availability_pb2.Badge, ev.badge, "UNSPECIFIED"),
        "version": ev.version,
    }


def reservation_json(res: catalog_pb2.Reservation) -> dict[str, Any]:
    return {
        "id": res.id,
        "event_id": res.event_id,
        "quantity": res.quantity,
        "ticket_type": client.ticket_type_name(res.ticket_type),
        "status": short_name(catalog_pb2.ReservationStatus, res.status, "UNSPECIFIED"),
        "expires_at": timestamp_iso(res.expires_at, res.HasField("expires_at")),
        "payment_reference": res.payment_reference or None,
    }


def hold_json(reply: reservation_pb2.CreateHoldResponse, now: datetime) -> dict[str, Any]:
    """The hold and how long it has left by the gateway's clock, so a browser with a skewed clock
    still counts down correctly."""
    body = reservation_json(reply.reservation)
    expires_in: float | None = None
    if reply.reservation.HasField("expires_at"):
        expires = reply.reservation.expires_at.ToDatetime(tzinfo=UTC)
        expires_in = max(0.0, (expires - now).total_seconds())
    return {
        "reservation_id": reply.reservation.id,
        "hold_token": reply.hold_token,
        "expires_at": body["expires_at"],
        "expires_in_s": expires_in,
        "reservation": body,
    }


def parse_hold_request(body: Any) -> reservation_pb2.CreateHoldRequest:
    """Shape checks only; the service judges the values (quantity 0, unknown event...)."""
    fields = _object(body)
    event_id = fields.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise BadRequest("event_id is required")
    quantity = fields.get("quantity")
    if isinstance(quantity, str) and quantity.strip().lstrip("-").isdigit():
        quantity = int(quantity)
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        raise BadRequest("quantity must be a whole number of seats")
    if not -(2**31) <= quantity < 2**31:
        raise BadRequest("quantity is out of range")
    ticket_name = fields.get("ticket_type") or "dinner"
    if not isinstance(ticket_name, str) or ticket_name.lower() not in TICKET_TYPES:
        raise BadRequest("ticket_type must be 'dinner' or 'experience-only'")
    customer_ref = fields.get("customer_ref") or ""
    idempotency_key = fields.get("idempotency_key") or ""
    if not isinstance(customer_ref, str) or not isinstance(idempotency_key, str):
        raise BadRequest("customer_ref and idempotency_key must be strings")
    return reservation_pb2.CreateHoldRequest(
        event_id=event_id.strip(),
        quantity=quantity,
        ticket_type=TICKET_TYPES[ticket_name.lower()],
        customer_ref=customer_ref,
        idempotency_key=idempotency_key,
    )


def parse_hold_token(body: Any) -> str:
    token = _object(body).get("hold_token")
    if not isinstance(token, str) or not token:
        raise BadRequest("hold_token is required")
    return token


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body
