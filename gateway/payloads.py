"""Protobuf messages to the JSON the page reads, and the page's JSON to requests. Kept apart from
the routes so the shapes the browser sees are written down in one place."""

from __future__ import annotations

import json
import re
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


# Deeper than any body the page sends, and far below Python's recursion limit: a body of 100,000
# nested arrays is refused by a linear scan instead of crashing the parser with RecursionError.
MAX_JSON_DEPTH = 32
# Longer integers are no seat count; Python also refuses to convert over 4,300 digits.
MAX_INTEGER_DIGITS = 20
# A quantity as a string ("2", as an HTML form field would send it): ASCII digits only, so that
# "²" or "٣" (which str.isdigit() accepts) are refused rather than crashing int().
_QUANTITY_TEXT = re.compile(r"-?[0-9]{1,10}")


class BadRequest(ValueError):
    """The browser sent a request the gateway cannot turn into an RPC: an HTTP 4xx whose message
    names what is wrong (400 unless a subclass says otherwise)."""

    status = 400
    code = "INVALID_ARGUMENT"


class BodyTooLarge(BadRequest):
    status = 413
    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body must be at most {limit} bytes")


class NotJson(BadRequest):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


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
        # Issue 12: a payment in progress (its grace), a late payment, a partial refund.
        "payment_grace_until": timestamp_iso(
            res.payment_grace_until, res.HasField("payment_grace_until")
        ),
        "paid_late": res.paid_late,
        "refunded_quantity": res.refunded_quantity,
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


def content_type_is_json(content_type: str | None) -> bool:
    """``application/json`` (any parameters) or a ``+json`` type; no header is taken as JSON, so
    that ``curl --data`` works, but a form or text post is not."""
    if content_type is None:
        return True
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def decode_json(body: bytes) -> Any:
    """Strict JSON from UTF-8 bytes, every failure a ``BadRequest``: no ``NaN``/``Infinity``, no
    integer longer than ``MAX_INTEGER_DIGITS``, no nesting deeper than ``MAX_JSON_DEPTH``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the request body must be JSON in UTF-8") from None
    if _nesting_depth_exceeds(text, MAX_JSON_DEPTH):
        raise BadRequest(f"the request body must be JSON nested at most {MAX_JSON_DEPTH} deep")
    try:
        return json.loads(text, parse_int=_parse_int, parse_constant=_refuse_constant)
    except BadRequest:
        raise
    except ValueError:
        raise BadRequest("the request body must be JSON") from None


def _nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (counted before parsing, since
    the parser recurses once per level)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadRequest(
            f"numbers in the request body must have at most {MAX_INTEGER_DIGITS} digits"
        )
    return int(digits)


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"the request body must be JSON ({name} is not a JSON number)")


def parse_hold_request(body: Any) -> reservation_pb2.CreateHoldRequest:
    """Shape checks only; the service judges the values (quantity 0, unknown event...)."""
    fields = _object(body)
    event_id = _text(fields, "event_id").strip()
    if not event_id:
        raise BadRequest("event_id is required")
    ticket_name = fields.get("ticket_type") or "dinner"
    if not isinstance(ticket_name, str) or ticket_name.lower() not in TICKET_TYPES:
        raise BadRequest("ticket_type must be 'dinner' or 'experience-only'")
    return reservation_pb2.CreateHoldRequest(
        event_id=event_id,
        quantity=_quantity(fields.get("quantity")),
        ticket_type=TICKET_TYPES[ticket_name.lower()],
        customer_ref=_text(fields, "customer_ref", optional=True),
        idempotency_key=_text(fields, "idempotency_key", optional=True),
    )


def parse_hold_token(body: Any, fallback: str = "") -> str:
    """The body's hold_token, or ``fallback`` (the hold cookie's) when the body has none."""
    token = _text(_object(body), "hold_token", optional=bool(fallback))
    return token or fallback


def check_path_text(name: str, value: str) -> str:
    """A path parameter as a string field of a request: it must be encodable as UTF-8."""
    return _text({name: value}, name)


def _quantity(value: Any) -> int:
    """A JSON integer, or a string of ASCII digits; never a float, a bool or "1e3"."""
    if isinstance(value, str) and _QUANTITY_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("quantity must be a whole number of seats, such as 2")
    if not -(2**31) <= value < 2**31:
        raise BadRequest("quantity is out of range")
    return value


def _text(fields: dict[str, Any], name: str, *, optional: bool = False) -> str:
    """A string field; JSON allows lone surrogates ("\\ud800"), which protobuf cannot encode."""
    value = fields.get(name)
    if value is None or value == "":
        if optional:
            return ""
        raise BadRequest(f"{name} is required")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} must be valid Unicode text (it has a lone surrogate)") from None
    return value


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body
