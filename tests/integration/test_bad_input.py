"""Every RPC with bad input gets a clear status (never UNKNOWN or INTERNAL) and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import grpc
import pytest

from slotlock.v1 import catalog_pb2
from slotlock.v1 import reservation_pb2 as r
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from tests.support import snapshot

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED

Case = tuple[
    str, Callable[[ReservationServiceStub, dict[str, Any]], Awaitable[Any]], grpc.StatusCode, str
]
MISSING = str(uuid.UUID(int=1))
FUTURE = (date.today() + timedelta(days=20)).isoformat()

CASES: list[Case] = [
    ("upsert without code", lambda s, w: s.UpsertEvent(event_request("")), INVALID, "code"),
    (
        "upsert bad date",
        lambda s, w: s.UpsertEvent(event_request("B-1", local_date="24/12/2026")),
        INVALID,
        "local_date",
    ),
    (
        "upsert bad time",
        lambda s, w: s.UpsertEvent(event_request("B-1", local_start_time="7pm")),
        INVALID,
        "local_start_time",
    ),
    (
        "upsert bad zone",
        lambda s, w: s.UpsertEvent(event_request("B-1", time_zone="Mars/Base")),
        INVALID,
        "time_zone",
    ),
    (
        "upsert negative capacity",
        lambda s, w: s.UpsertEvent(event_request("B-1", capacity=-1)),
        INVALID,
        "capacity",
    ),
    (
        "upsert bad status",
        lambda s, w: s.UpsertEvent(event_request("B-1", status=42)),
        INVALID,
        "status",
    ),
    (
        "upsert mixed currencies",
        lambda s, w: s.UpsertEvent(
            event_request("B-1", experience_only_price=catalog_pb2.Money(amount=1, currency="USD"))
        ),
        INVALID,
        "currency",
    ),
    (
        "upsert capacity below taken",
        lambda s, w: s.UpsertEvent(event_request(w["code"], capacity=1)),
        PRECONDITION,
        "below",
    ),
    (
        "get event bad id",
        lambda s, w: s.GetEvent(r.GetEventRequest(event_id="abc")),
        INVALID,
        "event_id",
    ),
    (
        "get event missing",
        lambda s, w: s.GetEvent(r.GetEventRequest(event_id=MISSING)),
        NOT_FOUND,
        "not found",
    ),
    (
        "list events bad date",
        lambda s, w: s.ListEvents(r.ListEventsRequest(from_date="soon")),
        INVALID,
        "from_date",
    ),
    (
        "list events reversed",
        lambda s, w: s.ListEvents(r.ListEventsRequest(from_date=FUTURE, to_date="2020-01-01")),
        INVALID,
        "to_date",
    ),
    (
        "list events bad token",
        lambda s, w: s.ListEvents(r.ListEventsRequest(page_token="zzz")),
        INVALID,
        "page_token",
    ),
    (
        "list events negative size",
        lambda s, w: s.ListEvents(r.ListEventsRequest(page_size=-5)),
        INVALID,
        "page_size",
    ),
    (
        "hold quantity 0",
        lambda s, w: s.CreateHold(r.CreateHoldRequest(event_id=w["event"], quantity=0)),
        INVALID,
        "quantity",
    ),
    (
        "hold quantity too big",
        lambda s, w: s.CreateHold(r.CreateHoldRequest(event_id=w["event"], quantity=11)),
        INVALID,
        "at most 10",
    ),
    (
        "hold unknown event",
        lambda s, w: s.CreateHold(r.CreateHoldRequest(event_id=MISSING, quantity=1)),
        NOT_FOUND,
        "not found",
    ),
    (
        "hold bad event id",
        lambda s, w: s.CreateHold(r.CreateHoldRequest(event_id="", quantity=1)),
        INVALID,
        "event_id",
    ),
    (
        "hold bad ticket type",
        lambda s, w: s.CreateHold(
            r.CreateHoldRequest(event_id=w["event"], quantity=1, ticket_type=9)
        ),
        INVALID,
        "ticket_type",
    ),
    (
        "hold too many seats",
        lambda s, w: s.CreateHold(r.CreateHoldRequest(event_id=w["event"], quantity=9)),
        PRECONDITION,
        "only 3 left",
    ),
    (
        "payment attempt without order id",
        lambda s, w: s.RecordPaymentAttempt(
            r.RecordPaymentAttemptRequest(reservation_id=w["hold"], hold_token=w["token"])
        ),
        INVALID,
        "provider_order_id",
    ),
    (
        "payment attempt wrong token",
        lambda s, w: s.RecordPaymentAttempt(
            r.RecordPaymentAttemptRequest(
                reservation_id=w["hold"],
                hold_token="x",
                payment=catalog_pb2.PaymentAttempt(provider_order_id="o"),
            )
        ),
        DENIED,
        "token",
    ),
    (
        "confirm missing token",
        lambda s, w: s.ConfirmHold(
            r.ConfirmHoldRequest(reservation_id=w["hold"], payment_reference="p")
        ),
        INVALID,
        "hold_token",
    ),
    (
        "confirm missing reference",
        lambda s, w: s.ConfirmHold(
            r.ConfirmHoldRequest(reservation_id=w["hold"], hold_token=w["token"])
        ),
        INVALID,
        "payment_reference",
    ),
    (
        "confirm unknown hold",
        lambda s, w: s.ConfirmHold(
            r.ConfirmHoldRequest(reservation_id=MISSING, hold_token="t", payment_reference="p")
        ),
        NOT_FOUND,
        "not found",
    ),
    (
        "release bad id",
        lambda s, w: s.ReleaseHold(r.ReleaseHoldRequest(reservation_id="12", hold_token="t")),
        INVALID,
        "reservation_id",
    ),
    (
        "release wrong token",
        lambda s, w: s.ReleaseHold(r.ReleaseHoldRequest(reservation_id=w["hold"], hold_token="t")),
        DENIED,
        "token",
    ),
    (
        "get reservation missing",
        lambda s, w: s.GetReservation(r.GetReservationRequest(reservation_id=MISSING)),
        NOT_FOUND,
        "not found",
    ),
    (
        "list reservations bad status",
        lambda s, w: s.ListReservations(r.ListReservationsRequest(status=77)),
        INVALID,
        "status",
    ),
    (
        "list reservations bad event",
        lambda s, w: s.ListReservations(r.ListReservationsRequest(event_id="x")),
        INVALID,
        "event_id",
    ),
    (
        "refund pending hold",
        lambda s, w: s.RefundReservation(r.RefundReservationRequest(reservation_id=w["hold"])),
        PRECONDITION,
        "only a PAID",
    ),
    (
        "refund missing",
        lambda s, w: s.RefundReservation(r.RefundReservationRequest(reservation_id=MISSING)),
        NOT_FOUND,
        "not found",
    ),
]


@pytest.fixture
async def world(reservation: ReservationServiceStub) -> dict[str, Any]:
    event = await reservation.UpsertEvent(event_request("BAD-1", capacity=5))
    held = await reservation.CreateHold(r.CreateHoldRequest(event_id=event.id, quantity=2))
    return {
        "event": event.id,
        "code": "BAD-1",
        "hold": held.reservation.id,
        "token": held.hold_token,
    }


async def test_bad_input_gets_a_clear_status_and_changes_nothing(
    reservation: ReservationServiceStub, world: dict[str, Any], database_url: str
) -> None:
    before = snapshot(database_url)
    for name, call, code, words in CASES:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(reservation, world)
        assert refused.value.code() == code, (
            f"{name}: {refused.value.code()} {refused.value.details()}"
        )
        assert words in str(refused.value.details()), f"{name}: {refused.value.details()}"
        assert snapshot(database_url) == before, f"{name} changed the database"


async def test_deadline_is_honoured(
    reservation: ReservationServiceStub, world: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await reservation.CreateHold(
            r.CreateHoldRequest(event_id=world["event"], quantity=1), timeout=0.000001
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
