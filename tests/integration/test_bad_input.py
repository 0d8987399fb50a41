"""Every RPC with bad input gets a clear status (never UNKNOWN or INTERNAL) and changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import grpc
import pytest

from slotlock import page_tokens
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


async def test_a_non_ascii_hold_token_is_refused_as_wrong(
    reservation: ReservationServiceStub, world: dict[str, Any], database_url: str
) -> None:
    """The token check compares bytes: a token with non-ASCII characters is a wrong token
    (PERMISSION_DENIED), not a TypeError (INTERNAL)."""
    before = snapshot(database_url)
    token = "é" * 64
    calls = [
        reservation.RecordPaymentAttempt(
            r.RecordPaymentAttemptRequest(
                reservation_id=world["hold"],
                hold_token=token,
                payment=catalog_pb2.PaymentAttempt(provider_order_id="o"),
            )
        ),
        reservation.ConfirmHold(
            r.ConfirmHoldRequest(
                reservation_id=world["hold"], hold_token=token, payment_reference="p"
            )
        ),
        reservation.ReleaseHold(
            r.ReleaseHoldRequest(reservation_id=world["hold"], hold_token=token)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == DENIED, refused.value.details()
    assert snapshot(database_url) == before


@pytest.mark.parametrize(
    ("local_date", "start", "zone"),
    [
        ("0001-01-01", "00:00", "Pacific/Kiritimati"),  # UTC+14: the day before year 1
        ("0001-01-01", "13:00", "Asia/Tokyo"),
        ("9999-12-31", "19:00", "Etc/GMT+12"),  # UTC-12: year 10000 in UTC
        ("9999-12-31", "23:59", "America/New_York"),
    ],
)
async def test_a_start_outside_the_representable_range_is_refused(
    reservation: ReservationServiceStub,
    database_url: str,
    local_date: str,
    start: str,
    zone: str,
) -> None:
    before = snapshot(database_url)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reservation.UpsertEvent(
            event_request("EDGE-1", local_date=local_date, local_start_time=start, time_zone=zone)
        )
    assert refused.value.code() == INVALID, refused.value.details()
    assert "local_date" in str(refused.value.details())
    assert snapshot(database_url) == before


async def test_starts_at_the_edges_of_the_range_are_kept_and_read_back(
    reservation: ReservationServiceStub,
) -> None:
    """The last start the rule lets through is stored, read back, listed and paged over."""
    late = await reservation.UpsertEvent(
        event_request(
            "EDGE-LATE", local_date="9999-12-29", local_start_time="23:00", time_zone="Etc/GMT+12"
        )
    )
    early = await reservation.UpsertEvent(
        event_request(
            "EDGE-EARLY",
            local_date="0001-01-03",
            local_start_time="00:00",
            time_zone="Pacific/Kiritimati",
        )
    )
    assert (await reservation.GetEvent(r.GetEventRequest(event_id=late.id))).code == "EDGE-LATE"
    assert (await reservation.GetEvent(r.GetEventRequest(event_id=early.id))).code == "EDGE-EARLY"
    first = await reservation.ListEvents(r.ListEventsRequest(page_size=1))
    assert [e.code for e in first.events] == ["EDGE-EARLY"]
    rest = await reservation.ListEvents(
        r.ListEventsRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [e.code for e in rest.events] == ["EDGE-LATE"]


@pytest.mark.parametrize(
    "values",
    [
        ["2026-W01-1", str(uuid.UUID(int=5))],  # an ISO week date: Python parses it
        ["2026-12-24T19:00:00+07:00", f"urn:uuid:{uuid.UUID(int=5)}"],  # Python's UUID takes it
        ["2026-12-24T19:00:00", str(uuid.UUID(int=5))],  # no offset: not one we issued
        ["+002026-12-24T19:00:00+00:00", "{" + str(uuid.UUID(int=5)) + "}"],
    ],
)
async def test_page_tokens_python_accepts_never_reach_postgres_raw(
    reservation: ReservationServiceStub, values: list[str]
) -> None:
    """A well-signed token with odd but parseable values is either used as the typed value it
    decodes to, or refused as INVALID_ARGUMENT: never INTERNAL from Postgres."""
    events_token = page_tokens.encode(values, page_tokens.scope_of("events", None, None, None))
    holds_token = page_tokens.encode(values, page_tokens.scope_of("reservations", None, None))
    calls = [
        reservation.ListEvents(r.ListEventsRequest(page_token=events_token)),
        reservation.ListReservations(r.ListReservationsRequest(page_token=holds_token)),
    ]
    for call in calls:
        try:
            await call
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == INVALID, refused.details()
            assert "page_token" in str(refused.details())


async def test_list_reservations_pages_hold_at_most_200(
    reservation: ReservationServiceStub,
) -> None:
    """The contract's bound: 200 reservations a page, whatever page_size asks (500 for events)."""
    event = await reservation.UpsertEvent(event_request("MANY-1", capacity=250))
    await asyncio.gather(
        *(
            reservation.CreateHold(r.CreateHoldRequest(event_id=event.id, quantity=1))
            for _ in range(201)
        )
    )
    page = await reservation.ListReservations(
        r.ListReservationsRequest(event_id=event.id, page_size=500)
    )
    assert len(page.reservations) == 200
    assert page.next_page_token
    rest = await reservation.ListReservations(
        r.ListReservationsRequest(event_id=event.id, page_size=500, page_token=page.next_page_token)
    )
    assert len(rest.reservations) == 1 and not rest.next_page_token
