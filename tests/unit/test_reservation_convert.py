"""Domain -> protobuf: an event converted again after a change reads as the changed event (the
unchanging part of each event is converted once and reused)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time

from reservation_service import convert
from reservation_service.holds import Event, EventOverrides, EventStatus, Money
from slotlock.v1 import catalog_pb2

EVENT = Event(
    id="5e2ed14b-5af4-42c0-bfb1-471a673ac41d",
    code="DS-1",
    experience_title="Dinner Show",
    local_date=date(2099, 1, 1),
    local_start_time=time(19, 0),
    time_zone="Asia/Ho_Chi_Minh",
    starts_at=datetime(2099, 1, 1, 12, tzinfo=UTC),
    capacity=10,
    status=EventStatus.SCHEDULED,
    experience_only_enabled=True,
    dinner_price=Money(100, "VND"),
    experience_only_price=Money(50, "VND"),
)


def fresh(event: Event) -> catalog_pb2.Event:
    """The conversion with nothing reused."""
    convert._UNCHANGING.clear()
    return convert.event_to_proto(event)


def test_every_change_to_an_event_shows_after_converting_it_before() -> None:
    changed = [
        replace(EVENT, pending=4, paid=6, version=2),  # sold out: status follows the counters
        replace(EVENT, experience_title="Dinner Show II", capacity=20, version=3),
        replace(EVENT, dinner_price=Money(120, "VND"), status=EventStatus.CANCELLED),
        replace(EVENT, overrides=EventOverrides(hold_ttl_s=60, max_seats_per_customer=2)),
        replace(EVENT, next_hold_lapses_at=datetime(2098, 1, 1, tzinfo=UTC)),
        replace(
            EVENT, local_start_time=time(20, 30), starts_at=datetime(2099, 1, 1, 13, 30, tzinfo=UTC)
        ),
        EVENT,
    ]
    expected = [fresh(event) for event in changed]
    convert._UNCHANGING.clear()
    convert.event_to_proto(EVENT)
    for event, wanted in zip(changed, expected, strict=True):
        assert convert.event_to_proto(event) == wanted, event
    assert expected[0].status == catalog_pb2.EVENT_STATUS_SOLD_OUT
    assert expected[-1].status == catalog_pb2.EVENT_STATUS_SCHEDULED
