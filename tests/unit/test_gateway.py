"""The gateway's pure parts: conflation of the fan-out (a slow browser gets the latest state per
event, never a queue), version ordering, request parsing and settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from gateway import payloads
from gateway.app import Gateway, create_app
from gateway.fanout import AvailabilityFanout, sse_frame
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


def decode(frame: bytes) -> tuple[str, dict[str, object]]:
    event_line, data_line = frame.decode().strip().splitlines()
    return event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


def split(data: bytes) -> list[bytes]:
    """The frames of one write (the first write holds the status and the whole catalog)."""
    return [frame + b"\n\n" for frame in data.split(b"\n\n") if frame]


class Socket:
    """A sink that records writes; ``full`` plays a browser whose socket has not taken the
    previous write yet."""

    chunked = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.full = False
        self.closed = False
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> bool:
        if self.full:
            return False
        self.writes.append(data)
        self.wrote.set()
        return True

    def close(self) -> None:
        self.closed = True

    def frames(self) -> list[tuple[str, dict[str, object]]]:
        """Everything written since the last call, decoded."""
        data, self.writes = b"".join(self.writes), []
        return [decode(frame) for frame in split(data)]


def browser(fanout: AvailabilityFanout) -> Socket:
    sink = Socket()
    fanout.start_browser(fanout.subscribe(sink))
    return sink


def test_a_slow_browser_gets_only_the_latest_state_of_each_event_in_one_write() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    sink = browser(fanout)
    fanout.sweep_now()
    sink.frames()  # the status and the (empty) catalog
    sink.full = True  # the browser does not read for a while
    for version in range(1, 1001):
        fanout.apply(availability("a", version, pending=version % 7))
        assert fanout.sweep_now() == (0, 1)  # busy: nothing is queued for it
    fanout.apply(availability("b", 1))
    sink.full = False
    assert fanout.sweep_now() == (1, 0)
    assert len(sink.writes) == 1
    assert [(data["event_id"], data["version"]) for _, data in sink.frames()] == [
        ("a", 1000),
        ("b", 1),
    ]
    assert fanout.sweep_now() == (0, 0)  # up to date: nothing more to write


def test_older_versions_are_dropped_and_newcomers_get_the_cache() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    assert fanout.apply(availability("a", 5, pending=2))
    assert not fanout.apply(availability("a", 4, pending=9))
    assert not fanout.apply(availability("a", 5, pending=9))
    sink = Socket()
    late = fanout.subscribe(sink)
    fanout.sweep_now()
    assert sink.writes == []  # nothing before its headers are out
    fanout.start_browser(late)
    fanout.sweep_now()
    (status, current) = sink.frames()
    assert status == (
        "status",
        {"live": False, "message": "connecting to the availability service"},
    )
    assert current[1]["pending"] == 2 and current[1]["version"] == 5
    fanout.unsubscribe(late)
    assert fanout.watcher_count == 0


def test_status_changes_come_first_and_conflate_too() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    sink = browser(fanout)
    fanout.sweep_now()
    sink.frames()
    fanout.apply(availability("a", 1))
    fanout._on_watch_status(True, "")
    fanout._on_watch_status(False, "the availability service is away")
    fanout.sweep_now()
    frames = sink.frames()
    assert [name for name, _ in frames] == ["status", "availability"]
    assert frames[0][1]["live"] is False and "away" in str(frames[0][1]["message"])


async def test_newcomers_share_one_encoded_snapshot_and_updates_follow_it() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    for n in range(50):
        fanout.apply(availability(f"e{n}", 1))
    first, second = browser(fanout), browser(fanout)
    fanout.sweep_now()
    # The very same bytes object for every browser at the same point of the feed (no copy
    # per browser).
    assert first.writes[0] is second.writes[0]
    frames = first.frames()
    assert [d["event_id"] for _, d in frames[1:51]] == [f"e{n}" for n in range(50)]
    fanout.apply(availability("e7", 2, pending=1))
    third = browser(fanout)
    fanout.sweep_now()
    assert first.writes[0] is second.writes[-1]  # one shared update write
    assert [(d["event_id"], d["version"]) for _, d in first.frames()] == [("e7", 2)]
    # The newcomer's catalog already has e7 at version 2, after the others: an older state of
    # an event never follows a newer one.
    third_frames = third.frames()
    assert [d["version"] for _, d in third_frames if d.get("event_id") == "e7"] == [2]
    assert third_frames[-1][1]["event_id"] == "e7"


def test_a_big_catalog_is_one_shared_write_and_frames_are_chunked_for_http_1_1() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings())
    for n in range(500):  # ~200 KB of frames
        fanout.apply(availability(f"event-{n}", 1))
    sinks = [browser(fanout) for _ in range(3)]
    chunked = Socket()
    chunked.chunked = True
    fanout.start_browser(fanout.subscribe(chunked))
    fanout.sweep_now()
    assert all(len(sink.writes) == 1 for sink in sinks)
    assert sinks[0].writes[0] is sinks[1].writes[0] is sinks[2].writes[0]
    size, _, rest = chunked.writes[0].partition(b"\r\n")
    assert int(size, 16) == len(sinks[0].writes[0]) and rest == sinks[0].writes[0] + b"\r\n"


async def test_the_writer_sends_keepalives_when_the_feed_is_quiet_and_stop_closes_streams() -> None:
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings(sse_keepalive_s=0.05))
    writer = asyncio.create_task(fanout._write_loop())
    try:
        sink = browser(fanout)
        chunked = Socket()
        chunked.chunked = True
        fanout.start_browser(fanout.subscribe(chunked))
        async with asyncio.timeout(5):
            while len(sink.writes) < 3 or len(chunked.writes) < 3:
                sink.wrote.clear()
                await sink.wrote.wait()
        assert sink.writes[1:3] == [b": keepalive\n\n"] * 2
        assert chunked.writes[1] == b"d\r\n: keepalive\n\n\r\n"
    finally:
        writer.cancel()
    await fanout.stop()
    assert sink.closed and chunked.closed


async def test_a_stuck_browser_does_not_stop_keepalives_to_the_others() -> None:
    """A browser whose socket stays full is retried every 50 ms; those retries are not changes
    of the feed, so quiet browsers must still get their keepalives (proxies drop silent
    streams)."""
    fanout = AvailabilityFanout(stub=None, health=None, settings=Settings(sse_keepalive_s=0.2))
    writer = asyncio.create_task(fanout._write_loop())
    try:
        quiet, stuck = browser(fanout), browser(fanout)
        stuck.full = True
        async with asyncio.timeout(3):
            while b": keepalive\n\n" not in quiet.writes:
                quiet.wrote.clear()
                await quiet.wrote.wait()
    finally:
        writer.cancel()
    await fanout.stop()


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


# -- bad input over HTTP (the app in-process; these requests never reach a service) ------------

TEN_MB = 10 * 1024 * 1024


def app_client(**settings: Any) -> httpx.AsyncClient:
    """The gateway's app without its lifespan: no channels, so anything that gets past the
    request checks would fail with a 500, which these tests would see."""
    app = create_app(Settings(**{"demo_payments": True, **settings}))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10)


def assert_refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and message
    for word in words:
        assert word in message
    return message


async def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    """Nested arrays used to crash the JSON parser with RecursionError (HTTP 500). 8,000 levels
    fit in the default 16 KiB body limit; 100,000 in a larger one."""
    for depth, settings in ((8_000, {}), (100_000, {"max_body_bytes": 1 << 20})):
        nested = "[" * depth + "]" * depth
        async with app_client(**settings) as client:
            for path in ("/api/holds", "/api/holds/r1/pay", "/api/holds/r1/cancel"):
                response = await client.post(
                    path, content=nested, headers={"Content-Type": "application/json"}
                )
                assert_refused(response, 400, "nested")
    with pytest.raises(payloads.BadRequest, match="nested at most 32 deep"):
        payloads.decode_json(b'{"a": ' * 33 + b"1" + b"}" * 33)
    # Brackets inside strings are text, not nesting.
    assert payloads.decode_json(b'{"a": "' + b"[" * 1000 + b'"}') == {"a": "[" * 1000}


@pytest.mark.parametrize(
    "quantity",
    ["²", "٣", "1e3", 1.5, 2.0, True, None, [2], {"n": 2}, "0x10", "2 seats", "", 2**31],
)
async def test_a_quantity_that_is_not_a_whole_number_is_a_400_naming_it(quantity: Any) -> None:
    """ "²" passes str.isdigit() and then crashed int() (HTTP 500)."""
    async with app_client() as client:
        response = await client.post("/api/holds", json={"event_id": "e1", "quantity": quantity})
    assert_refused(response, 400, "quantity")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        # Lone surrogates are valid JSON escapes that protobuf cannot encode (was a 500).
        ('{"event_id": "\\ud800", "quantity": 1}', ["event_id"]),
        ('{"event_id": "e1", "quantity": 1, "customer_ref": "\\udfff"}', ["customer_ref"]),
        # Python refuses to convert integers over 4,300 digits (a ValueError, was a 500).
        ('{"event_id": "e1", "quantity": ' + "9" * 5000 + "}", ["digits"]),
        ('{"event_id": "e1", "quantity": NaN}', ["NaN"]),
        ('{"event_id": "e1", "quantity": -Infinity}', ["Infinity"]),
        ('"just a string"', ["JSON object"]),
        ('{"event_id": 7, "quantity": 1}', ["event_id"]),
        ('{"event_id": "e1", "quantity": 1, "idempotency_key": 3}', ["idempotency_key"]),
    ],
)
async def test_json_the_gateway_cannot_use_is_a_400(body: str, words: list[str]) -> None:
    async with app_client() as client:
        response = await client.post(
            "/api/holds", content=body, headers={"Content-Type": "application/json"}
        )
    assert_refused(response, 400, *words)


@pytest.mark.parametrize("token", ["\\ud800", "", 12, None])
async def test_a_hold_token_that_is_not_text_is_a_400(token: str) -> None:
    body = '{"hold_token": ' + (json.dumps(token) if "\\" not in str(token) else f'"{token}"') + "}"
    async with app_client() as client:
        response = await client.post(
            "/api/holds/r1/pay", content=body, headers={"Content-Type": "application/json"}
        )
    assert_refused(response, 400, "hold_token")


class CountingBody:
    """A request body that is generated as it is read, counting how much the gateway took."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += self.chunk
            yield b" " * self.chunk


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_50_mb_body_is_refused_with_413_without_being_read(declare_length: bool) -> None:
    """The whole body used to be read into memory before anything looked at it."""
    body = CountingBody(50 * 1024 * 1024)
    headers = {"Content-Type": "application/json"}
    if declare_length:
        headers["Content-Length"] = str(body.total)
    async with app_client() as client:
        response = await client.post("/api/holds", content=body, headers=headers)
    assert_refused(response, 413, "at most 16384 bytes")
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    # Nothing read when the length was declared; a chunked body only up to the limit.
    assert body.sent <= (0 if declare_length else 16 * 1024 + body.chunk)


async def test_the_body_limit_is_a_setting() -> None:
    hold = json.dumps({"event_id": "e1", "quantity": "²", "customer_ref": "x" * 200})
    async with app_client(max_body_bytes=100) as client:
        too_big = await client.post(
            "/api/holds", content=hold, headers={"Content-Type": "application/json"}
        )
    assert_refused(too_big, 413, "at most 100 bytes")
    assert Settings.from_env({"SLOTLOCK_GATEWAY_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096
    with pytest.raises(ValueError, match="SLOTLOCK_GATEWAY_MAX_BODY_BYTES must be between"):
        Settings.from_env({"SLOTLOCK_GATEWAY_MAX_BODY_BYTES": "0"})


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({"Content-Type": "text/plain"}, 415, ["application/json"]),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, ["application/json"]),
        ({"Content-Type": "application/json", "Content-Length": "1e3"}, 400, ["Content-Length"]),
        ({"Content-Type": "application/json", "Content-Length": "-1"}, 400, ["Content-Length"]),
        (
            {"Content-Type": "application/json", "Content-Length": "²".encode()},
            400,
            ["Content-Length"],
        ),
        ({"Content-Type": "application/json", "Content-Length": "9" * 40}, 400, ["Content-Length"]),
    ],
)
async def test_headers_that_do_not_describe_json_are_refused(
    headers: dict[str, Any], status: int, words: list[str]
) -> None:
    async with app_client() as client:
        response = await client.post("/api/holds", content=b'{"quantity": 1}', headers=headers)
    assert_refused(response, status, *words)


async def test_body_bytes_that_are_not_utf8_json_are_a_400() -> None:
    async with app_client() as client:
        for body in (b"\xff\xfe{", b"\x00" * 10, b"quantity=1", b"", b'{"a": 1'):
            response = await client.post(
                "/api/holds", content=body, headers={"Content-Type": "application/json"}
            )
            assert_refused(response, 400, "JSON")


def test_strings_of_ascii_digits_are_still_a_quantity() -> None:
    """The page sends numbers; a form-like client may send "2"."""
    assert payloads.parse_hold_request({"event_id": "e", "quantity": " 2 "}).quantity == 2
    assert payloads.parse_hold_request({"event_id": "e", "quantity": "-1"}).quantity == -1
