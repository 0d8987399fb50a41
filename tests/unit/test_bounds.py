"""Every request field has a bound in the contract, and the check enforces it."""

from __future__ import annotations

import pytest

from slotlock import bounds
from slotlock.errors import InvalidRequest
from slotlock.v1 import availability_pb2, catalog_pb2, reservation_pb2

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
