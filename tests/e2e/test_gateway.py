"""The web gateway in this process (uvicorn on port 0) against the real services run as processes
on real Postgres and NATS: bad input gets a readable message and the right HTTP code, a service
going down gets a readable 503, and when it comes back holds work again and the live stream
resumes by itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from slotlock.feed import Feed
from slotlock.identity import BOOKING, READER
from slotlock.v1 import reservation_pb2, reservation_pb2_grpc
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import System
from tests.support import serving_gateway

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def system(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[System]:
    with System(stack, feed, log_dir=tmp_path / "logs") as running:
        yield running


@pytest.fixture
async def gateway(system: System) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway served by uvicorn in this event loop, and a client pointed at it."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        reservation_addr=system.reservation_addr,
        availability_addr=system.availability_addr,
        client_security=system.client_security(BOOKING, READER, subject="gateway"),
        rpc_timeout_s=3.0,
        watch_retry_max_s=0.5,
        demo_payments=True,
        secure_cookies=False,
    )
    async with (
        serving_gateway(settings) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        yield client


class SseReader:
    """Reads /api/stream in the background; tests wait for the frame they expect."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._frames: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SseReader:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        async with self._client.stream("GET", "/api/stream", timeout=None) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    await self._frames.put((event, json.loads(line.removeprefix("data: "))))

    async def wait_for(
        self, event: str, matches: Callable[[dict[str, Any]], bool], within_s: float = 15.0
    ) -> dict[str, Any]:
        seen: list[tuple[str, dict[str, Any]]] = []
        try:
            async with asyncio.timeout(within_s):
                while True:
                    name, data = await self._frames.get()
                    seen.append((name, data))
                    if name == event and matches(data):
                        return data
        except TimeoutError:
            raise AssertionError(f"no matching {event!r} frame; saw {seen}") from None

    async def states(self, *event_ids: str, within_s: float = 15.0) -> dict[str, dict[str, Any]]:
        """The next state of each of ``event_ids``, in whatever order their frames come (a
        browser's first write has every event, in the order they last changed)."""
        found: dict[str, dict[str, Any]] = {}
        seen: list[tuple[str, dict[str, Any]]] = []
        try:
            async with asyncio.timeout(within_s):
                while len(found) < len(event_ids):
                    name, data = await self._frames.get()
                    seen.append((name, data))
                    if name == "availability" and data["event_id"] in event_ids:
                        found.setdefault(data["event_id"], data)
        except TimeoutError:
            raise AssertionError(f"not every event of {event_ids}; saw {seen}") from None
        return found


async def create_hold(client: httpx.AsyncClient, event_id: str, quantity: int) -> httpx.Response:
    return await client.post("/api/holds", json={"event_id": event_id, "quantity": quantity})


async def test_bad_input_gets_a_readable_message_and_the_right_status(
    system: System, gateway: httpx.AsyncClient
) -> None:
    event = system.seed_event("GW-BAD", capacity=3)

    unknown = await create_hold(gateway, str(uuid.uuid4()), 1)
    assert unknown.status_code == 404
    assert "not found" in unknown.json()["error"]

    zero = await create_hold(gateway, event.id, 0)
    assert zero.status_code == 400
    assert zero.json()["code"] == "INVALID_ARGUMENT"
    assert "quantity" in zero.json()["error"]

    too_many = await create_hold(gateway, event.id, 5)
    assert too_many.status_code == 409
    assert "not enough seats" in too_many.json()["error"]

    not_json = await gateway.post("/api/holds", content=b"quantity=1")
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "the request body must be JSON"

    no_route = await gateway.get("/api/holds")
    assert no_route.status_code == 405
    assert no_route.json()["error"] == "Method Not Allowed: GET /api/holds"

    no_quantity = await gateway.post("/api/holds", json={"event_id": event.id})
    assert no_quantity.status_code == 400
    assert "quantity" in no_quantity.json()["error"]

    held = await create_hold(gateway, event.id, 2)
    assert held.status_code == 201, held.text
    hold = held.json()
    assert hold["reservation"]["status"] == "PENDING"
    assert hold["hold_token"] and hold["expires_at"]
    assert 0 < hold["expires_in_s"] <= system.hold_ttl_s

    wrong_token = await gateway.post(
        f"/api/holds/{hold['reservation_id']}/pay", json={"hold_token": "0" * 64}
    )
    assert wrong_token.status_code == 403
    assert wrong_token.json()["error"]

    paid = await gateway.post(
        f"/api/holds/{hold['reservation_id']}/pay", json={"hold_token": hold["hold_token"]}
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["reservation"]["status"] == "PAID"
    assert paid.json()["reservation"]["payment_reference"].startswith("SIM-")

    cancel_paid = await gateway.post(
        f"/api/holds/{hold['reservation_id']}/cancel", json={"hold_token": hold["hold_token"]}
    )
    assert cancel_paid.status_code == 409
    assert cancel_paid.json()["error"]

    # The listing is the availability projection: it follows the payment within moments.
    row = await _listed_when(gateway, event.id, lambda ev: ev["paid"] == 2)
    assert (row["paid"], row["pending"], row["available"]) == (2, 0, 1)
    assert row["dinner_price"] == {"amount": 1_500_000, "currency": "VND"}


FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_50_mb_body_gets_413_before_it_is_sent(
    gateway: httpx.AsyncClient, chunked: bool
) -> None:
    """Over a real socket, a client sending 50 MB at a steady pace gets its 413 after the first
    few kilobytes: the gateway answers without waiting for (or keeping) the body. It used to read
    all 50 MB, then answer 400."""
    url = gateway.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % FIFTY_MB
    writer.write(
        b"POST /api/holds HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n\r\n"
    )
    piece = b" " * (64 * 1024)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while sent < FIFTY_MB:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                await writer.drain()
                await asyncio.sleep(0.002)  # about 30 MB/s: 50 MB take seconds

    pumping = asyncio.create_task(pump())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        sent_before_answer = sent
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if line)
        body = json.loads(await reader.readexactly(int(headers["content-length"])))
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        writer.close()
    assert status_line.startswith("HTTP/1.1 413"), (status_line, body)
    assert body == {
        "error": "the request body must be at most 16384 bytes",
        "code": "PAYLOAD_TOO_LARGE",
    }
    assert sent_before_answer < 5 * 1024 * 1024, sent_before_answer
    # The gateway still serves.
    assert (await gateway.get("/healthz")).status_code == 200


async def test_cancel_gives_the_seats_back(system: System, gateway: httpx.AsyncClient) -> None:
    event = system.seed_event("GW-CANCEL", capacity=4)
    hold = (await create_hold(gateway, event.id, 3)).json()
    released = await gateway.post(
        f"/api/holds/{hold['reservation_id']}/cancel", json={"hold_token": hold["hold_token"]}
    )
    assert released.status_code == 200, released.text
    assert released.json()["reservation"]["status"] == "CANCELLED"
    again = await create_hold(gateway, event.id, 4)
    assert again.status_code == 201, again.text


@pytest.fixture
async def system_with_gateway(
    stack: DevStack, feed: Feed, tmp_path: Path
) -> AsyncIterator[tuple[System, httpx.AsyncClient]]:
    """The gateway as a process too, for the restart test: restarting services from a process
    that itself runs grpc.aio has seen children die between fork and exec (see system.py)."""
    running = System(stack, feed, log_dir=tmp_path / "logs", gateway=True)
    await asyncio.to_thread(running.start)
    try:
        async with httpx.AsyncClient(base_url=running.gateway_url, timeout=10) as client:
            yield running, client
    finally:
        await asyncio.to_thread(running.stop)


async def test_services_going_away_get_a_readable_503_and_everything_resumes(
    system_with_gateway: tuple[System, httpx.AsyncClient],
) -> None:
    system, gateway = system_with_gateway
    event = system.seed_event("GW-RESTART", capacity=10)
    async with SseReader(gateway) as sse:
        await sse.wait_for("status", lambda s: s["live"])
        await sse.wait_for("availability", lambda ev: ev["event_id"] == event.id)

        # The reservation service goes down: holds get a 503 a person can read.
        system.stop_service("reservation")
        down = await create_hold(gateway, event.id, 1)
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "UNAVAILABLE"
        assert "reservation service is not reachable" in down.json()["error"]

        await asyncio.to_thread(system.start_service, "reservation")
        held = await _eventually_created(gateway, event.id, 1)
        assert held.status_code == 201, held.text
        seen = await sse.wait_for("availability", lambda ev: ev["pending"] == 1)
        assert seen["event_id"] == event.id

        # The availability service goes down: the listing says so, the stream says it is paused.
        system.stop_service("availability")
        paused = await sse.wait_for("status", lambda s: not s["live"])
        assert "availability service" in paused["message"]
        listing = await gateway.get("/api/events")
        assert listing.status_code == 503, listing.text
        assert "availability service is not reachable" in listing.json()["error"]
        health = (await gateway.get("/healthz")).json()
        assert health["availability_feed"] == "paused", health

        # Holds still work meanwhile (the reservation service is up) ...
        meanwhile = await create_hold(gateway, event.id, 2)
        assert meanwhile.status_code == 201, meanwhile.text

        # ... and once the availability service is back, the same stream carries on by itself.
        await asyncio.to_thread(system.start_service, "availability")
        await sse.wait_for("status", lambda s: s["live"])
        caught_up = await sse.wait_for("availability", lambda ev: ev["pending"] == 3)
        assert caught_up["available"] == 7
        after = await create_hold(gateway, event.id, 1)
        assert after.status_code == 201, after.text
        live = await sse.wait_for("availability", lambda ev: ev["pending"] == 4)
        assert live["version"] > caught_up["version"]
        listing = await gateway.get("/api/events")
        assert listing.status_code == 200, listing.text


async def test_every_browser_gets_the_current_state_first(
    system: System, gateway: httpx.AsyncClient
) -> None:
    first = system.seed_event("GW-FAN-1", capacity=5)
    second = system.seed_event("GW-FAN-2", capacity=5)
    assert (await create_hold(gateway, first.id, 2)).status_code == 201
    async with SseReader(gateway) as one:
        await one.wait_for("availability", lambda ev: ev["event_id"] == first.id and ev["pending"])
        # A browser arriving later is primed from the shared cache with both events.
        async with SseReader(gateway) as two:
            got = await two.states(first.id, second.id)
            assert got[first.id]["pending"] == 2 and got[second.id]["pending"] == 0
            assert (await create_hold(gateway, second.id, 1)).status_code == 201
            for reader in (one, two):
                change = await reader.wait_for(
                    "availability", lambda ev: ev["event_id"] == second.id and ev["pending"] == 1
                )
                assert change["available"] == 4
        health = (await gateway.get("/healthz")).json()
        assert health["availability_feed"] == "live"


async def _eventually_created(
    client: httpx.AsyncClient, event_id: str, quantity: int, within_s: float = 10.0
) -> httpx.Response:
    """The gateway's channel reconnects on its own; give it the moment it needs."""
    deadline = time.monotonic() + within_s
    while True:
        response = await create_hold(client, event_id, quantity)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def _listed_when(
    client: httpx.AsyncClient,
    event_id: str,
    matches: Callable[[dict[str, Any]], bool],
    within_s: float = 5.0,
) -> dict[str, Any]:
    """The event's row of /api/events once it matches (or as it is when time is up)."""
    deadline = time.monotonic() + within_s
    while True:
        response = await client.get("/api/events")
        assert response.status_code == 200, response.text
        (row,) = [ev for ev in response.json()["events"] if ev["event_id"] == event_id]
        if matches(row) or time.monotonic() > deadline:
            return dict(row)
        await asyncio.sleep(0.05)


async def test_a_buyer_cannot_choose_the_customer_ref_of_a_hold(
    system: System, gateway: httpx.AsyncClient
) -> None:
    """A chosen customer_ref would let one visitor spend (or dodge) another customer's
    per-customer seat limit; the gateway sends none."""
    event = system.seed_event("GW-CUSTOMER", capacity=4)
    made = await gateway.post(
        "/api/holds", json={"event_id": event.id, "quantity": 1, "customer_ref": "victim-7"}
    )
    assert made.status_code == 201, made.text
    stub = reservation_pb2_grpc.ReservationServiceStub(system.channel("reservation"))
    stored = await asyncio.to_thread(
        stub.GetReservation,
        reservation_pb2.GetReservationRequest(reservation_id=made.json()["reservation_id"]),
        timeout=10,
    )
    assert stored.customer_ref == ""
