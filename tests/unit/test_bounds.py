"""Every request field has a bound in the contract, and the check enforces it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from slotlock import bounds
from slotlock.errors import InvalidRequest
from slotlock.v1 import availability_pb2, catalog_pb2, changes_pb2, reservation_pb2

SERVICES = [
    reservation_pb2.DESCRIPTOR.services_by_name["ReservationService"],
    availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"],
]


def test_every_request_field_is_bounded() -> None:
    missing = [
        name
        for service in SERVICES
        for method in service.methods
        for name in bounds.unbounded_fields(method.input_type)
    ]
    assert missing == []


def test_a_string_over_its_bound_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest, match=r"customer_ref: at most 200 characters, got 201"):
        bounds.check_request(reservation_pb2.CreateHoldRequest(customer_ref="x" * 201))
    bounds.check_request(reservation_pb2.CreateHoldRequest(customer_ref="x" * 200))


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (reservation_pb2.UpsertEventRequest(code="DS\x00"), "code"),
        (reservation_pb2.ConfirmHoldRequest(payment_reference="p\x00"), "payment_reference"),
        (
            reservation_pb2.RecordPaymentAttemptRequest(
                payment=catalog_pb2.PaymentAttempt(qr_code="\x00")
            ),
            "payment.qr_code",
        ),
        (
            reservation_pb2.UpsertEventRequest(dinner_price=catalog_pb2.Money(currency="V\x00D")),
            "dinner_price.currency",
        ),
        (availability_pb2.WatchAvailabilityRequest(event_ids=["a\x00"]), "event_ids entry"),
        (
            availability_pb2.WatchAvailabilityRequest(known_versions={"\x00": 1}),
            "known_versions entry",
        ),
    ],
)
def test_nul_characters_are_refused_anywhere(request_message: object, field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field}: must not contain NUL"):
        bounds.check_request(request_message)  # type: ignore[arg-type]


def test_repeated_fields_and_maps_are_bounded_in_entries() -> None:
    too_many = [f"{n:08d}-0000-0000-0000-000000000000" for n in range(10_001)]
    with pytest.raises(InvalidRequest, match="event_ids: at most 10,000 entries, got 10,001"):
        bounds.check_request(availability_pb2.WatchAvailabilityRequest(event_ids=too_many))
    with pytest.raises(InvalidRequest, match="known_versions: at most 10,000 entries"):
        bounds.check_request(
            availability_pb2.WatchAvailabilityRequest(known_versions=dict.fromkeys(too_many, 1))
        )


def test_readme_lists_every_bound() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert bounds.markdown_table(SERVICES) in readme, (
        "README's request limits are stale; paste:\n" + bounds.markdown_table(SERVICES)
    )


GRPC_MAX_MESSAGE = 4 * 1024 * 1024
NATS_MAX_PAYLOAD = 1024 * 1024
WIDE = "𝄞"  # four bytes in UTF-8: the worst case for a bound in characters


def widest(message_type: type[Any], field: str) -> str:
    """A string as long as the request bound of the same name allows, in 4-byte characters."""
    descriptor = message_type.DESCRIPTOR.fields_by_name[field]
    return WIDE * bounds.bounds_of(descriptor).max_length


def worst_event() -> catalog_pb2.Event:
    upsert = reservation_pb2.UpsertEventRequest
    price = catalog_pb2.Money(amount=2**63 - 1, currency=widest(catalog_pb2.Money, "currency"))
    return catalog_pb2.Event(
        id=str(uuid.UUID(int=2**128 - 1)),
        code=widest(upsert, "code"),
        experience_title=widest(upsert, "experience_title"),
        local_date="9999-12-31",
        local_start_time="23:59",
        time_zone=widest(upsert, "time_zone"),
        starts_at=timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999),
        capacity=2**31 - 1,
        status=catalog_pb2.EVENT_STATUS_SOLD_OUT,
        experience_only_enabled=True,
        dinner_price=price,
        experience_only_price=price,
        paid=2**31 - 1,
        pending=2**31 - 1,
        available=2**31 - 1,
        version=2**63 - 1,
    )


def worst_reservation() -> catalog_pb2.Reservation:
    stamp = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999999999)
    payment = catalog_pb2.PaymentAttempt(
        **{
            f: widest(catalog_pb2.PaymentAttempt, f)
            for f in ("provider_order_id", "virtual_account_number", "qr_code", "qr_code_url")
        }
    )
    return catalog_pb2.Reservation(
        id=str(uuid.UUID(int=2**128 - 1)),
        event_id=str(uuid.UUID(int=2**128 - 1)),
        quantity=2**31 - 1,
        ticket_type=catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY,
        status=catalog_pb2.RESERVATION_STATUS_REFUNDED,
        customer_ref=widest(reservation_pb2.CreateHoldRequest, "customer_ref"),
        created_at=stamp,
        updated_at=stamp,
        expires_at=stamp,
        payment=payment,
        payment_reference=widest(reservation_pb2.ConfirmHoldRequest, "payment_reference"),
        refund_reason=widest(reservation_pb2.RefundReservationRequest, "reason"),
    )


def test_no_response_or_feed_message_can_exceed_its_transport_limit() -> None:
    """The bounds, with the page sizes, keep every message under gRPC's and NATS's limits."""
    event, reservation = worst_event(), worst_reservation()
    change = changes_pb2.EventChange(
        change_id=2**63 - 1, type=1, event=event, reservation=reservation
    )
    assert change.ByteSize() < NATS_MAX_PAYLOAD // 4
    events_page = reservation_pb2.ListEventsResponse(
        events=[event] * 500, next_page_token="x" * 1024
    )
    assert events_page.ByteSize() < GRPC_MAX_MESSAGE
    reservations_page = reservation_pb2.ListReservationsResponse(
        reservations=[reservation] * 200, next_page_token="x" * 1024
    )
    assert reservations_page.ByteSize() < GRPC_MAX_MESSAGE
    availability = availability_pb2.EventAvailability(
        event_id=event.id,
        code=event.code,
        experience_title=event.experience_title,
        local_date=event.local_date,
        local_start_time=event.local_start_time,
        time_zone=event.time_zone,
        starts_at=event.starts_at,
        dinner_price=event.dinner_price,
        experience_only_price=event.experience_only_price,
        version=event.version,
    )
    listing = availability_pb2.ListAvailabilityResponse(events=[availability] * 500)
    assert listing.ByteSize() < GRPC_MAX_MESSAGE
