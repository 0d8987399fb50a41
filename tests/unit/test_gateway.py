"""The gateway's pure parts: conflation of the fan-out (a slow browser gets the latest state per
event, never a queue), version ordering, request parsing and settings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from gateway import payloads
from gateway.app import Gateway
from gateway.fanout import AvailabilityFanout, Watcher, sse_frame
from gateway.settings import Settings
from slotlock.v1 import availability_pb2, catalog_pb2


def availability(
    event_id: str, version: int, pending: int = 0
) -> availability_pb2.EventAvailability:
    return availability_pb2.EventAvailability(
        event_id=event_id,
        code=f"C-{event_id}",
        capacity=10,
        pending=pending,
        available=10 - pending,
        version=version,
        badge=availability_pb2.BADGE_AVAILABLE,
        dinner_price=catalog_pb2.Money(amount=1_500_000, currency="VND"),
    )


def decode(frame: str) -> tuple[str, dict[str, object]]:
    event_line, data_line = frame.strip().splitlines()
    return event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


async def test_a_slow_watcher_gets_only_the_latest_state_of_each_event() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    watcher = fanout.subscribe()
    for version in range(1, 1001):
        fanout.apply(availability("a", version, pending=version % 7))
    fanout.apply(availability("b", 1))
    frames = [decode(frame) for frame in await watcher.next_frames(idle_s=0.01)]
    assert [name for name, _ in frames] == ["status", "availability", "availability"]
    assert [(data["event_id"], data["version"]) for _, data in frames[1:]] == [
        ("a", 1000),
        ("b", 1),
    ]
    assert await watcher.next_frames(idle_s=0.01) == []


async def test_older_versions_are_dropped_and_newcomers_get_the_cache() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    assert fanout.apply(availability("a", 5, pending=2))
    assert not fanout.apply(availability("a", 4, pending=9))
    assert not fanout.apply(availability("a", 5, pending=9))
    late = fanout.subscribe()
    (status, current) = [decode(frame) for frame in await late.next_frames(idle_s=0.01)]
    assert status == (
        "status",
        {"live": False, "message": "connecting to the availability service"},
    )
    assert current[1]["pending"] == 2 and current[1]["version"] == 5
    fanout.unsubscribe(late)
    assert fanout.watcher_count == 0


async def test_closing_a_watcher_wakes_it() -> None:
    watcher = Watcher()
    watcher.close()
    assert await watcher.next_frames(idle_s=5) == []
    assert watcher.closed


def test_frames_are_single_line_json() -> None:
    frame = sse_frame("availability", payloads.availability_json(availability("a", 1)))
    name, data = decode(frame)
    assert name == "availability"
    assert data["dinner_price"] == {"amount": 1_500_000, "currency": "VND"}
    assert data["badge"] == "AVAILABLE" and data["starts_at"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the request body must be a JSON object"),
        ({"quantity": 1}, "event_id is required"),
        ({"event_id": "e", "quantity": "lots"}, "quantity must be a whole number of seats"),
        ({"event_id": "e", "quantity": True}, "quantity must be a whole number of seats"),
        ({"event_id": "e", "quantity": 2**40}, "quantity is out of range"),
        ({"event_id": "e", "quantity": 1, "ticket_type": "vip"}, "ticket_type must be"),
    ],
)
def test_malformed_hold_requests_are_refused_readably(body: object, message: str) -> None:
    with pytest.raises(payloads.BadRequest, match=message):
        payloads.parse_hold_request(body)


def test_hold_request_keeps_values_for_the_service_to_judge() -> None:
    request = payloads.parse_hold_request(
        {"event_id": " e1 ", "quantity": 0, "ticket_type": "experience-only"}
    )
    assert (request.event_id, request.quantity) == ("e1", 0)
    assert request.ticket_type == catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY


def test_settings_from_env() -> None:
    assert Settings.from_env({}) == Settings()
    custom = Settings.from_env(
        {"SLOTLOCK_GATEWAY_PORT": "9000", "SLOTLOCK_RESERVATION_ADDR": "res:1"}
    )
    assert (custom.port, custom.reservation_addr) == (9000, "res:1")
    with pytest.raises(ValueError, match="SLOTLOCK_GATEWAY_PORT must be an integer, not 'http'"):
        Settings.from_env({"SLOTLOCK_GATEWAY_PORT": "http"})


class _FakeAvailability:
    """ListAvailability in two pages, as the service pages a long listing."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def ListAvailability(
        self, request: availability_pb2.ListAvailabilityRequest, *, timeout: float | None = None
    ) -> availability_pb2.ListAvailabilityResponse:
        self.tokens.append(request.page_token)
        if not request.page_token:
            return availability_pb2.ListAvailabilityResponse(
                events=[availability("a", 1)], next_page_token="p2"
            )
        return availability_pb2.ListAvailabilityResponse(events=[availability("b", 1)])


async def test_the_listing_tells_the_page_the_seat_limit_per_hold() -> None:
    """The page used to hard-code 10 seats per hold; now it reads the service's limit
    (SLOTLOCK_MAX_SEATS_PER_HOLD, which the gateway reads too) from /api/events."""
    gateway = Gateway(Settings.from_env({"SLOTLOCK_MAX_SEATS_PER_HOLD": "4"}))
    fake = _FakeAvailability()
    gateway.services = SimpleNamespace(availability=fake)  # type: ignore[assignment]
    gateway.fanout = AvailabilityFanout(stub=None, health=None, settings=gateway.settings)
    request = Request({"type": "http", "method": "GET", "path": "/api/events", "headers": []})
    response = await gateway.list_events(request)
    body = json.loads(bytes(response.body))
    assert body["max_seats_per_hold"] == 4
    assert [ev["event_id"] for ev in body["events"]] == ["a", "b"]
    assert fake.tokens == ["", "p2"]
