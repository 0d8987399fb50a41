"""Fuzz every HTTP endpoint of the gateway, as a hostile client would, against the real
reservation and availability services (processes started by System on real Postgres and NATS).

The gateway's app runs in this process on an event loop of its own, and requests go to it as
ASGI calls, the way uvicorn hands them over: that way the fuzzer can send what an HTTP client
library would refuse to (Content-Length lies, duplicate or non-ASCII headers, any method name,
bodies split into arbitrary chunks) and see how far the app read a body. Requests are generated
with hypothesis: random methods and paths under /api (and the page's paths), real and malformed
reservation ids, Content-Type and Content-Length headers true and false, JSON bodies with wrong
types, huge numbers, unicode, NULs and deep nesting, and bytes that are not JSON at all.

For every request: no 5xx, an answer within a timeout (no hang), a 4xx under /api carries a JSON
``{"error": <message>, "code": ...}``, and a refused request changes no row (a snapshot of the
reservation database before and after; holds live an hour, so the expirer changes nothing).

The default run is short enough for CI; ``SLOTLOCK_FUZZ_EXAMPLES=3000`` makes a long one. A
one-line summary of requests sent and status codes seen is printed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.types import Message

from gateway.app import Gateway, create_app
from gateway.settings import Settings
from slotlock.feed import Feed
from slotlock.identity import BOOKING, READER
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import System
from tests.support import snapshot

EXAMPLES = int(os.environ.get("SLOTLOCK_FUZZ_EXAMPLES", "300"))
REQUEST_TIMEOUT_S = 10.0
BODY_LIMIT = 16 * 1024
EVENT_CAPACITY = 100_000

pytestmark = pytest.mark.timeout(max(300, EXAMPLES))

T = TypeVar("T")


# -- the gateway in-process, called as uvicorn calls it ----------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    chunks: tuple[bytes, ...] = ()

    @property
    def body_size(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    chunks_read: int

    def json(self) -> Any:
        return json.loads(self.body)


class GatewayThread:
    """The gateway app and its gRPC channels on a private event loop in a thread, so the test's
    blocking calls (and hypothesis) never stall the loop serving them."""

    def __init__(self, settings: Settings) -> None:
        self.app: Starlette = create_app(settings)
        self.gateway: Gateway = self.app.state.gateway
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self.gateway.connect(), timeout=30)

    def stop(self) -> None:
        self.run(self.gateway.close(), timeout=30)
        self.run(self._cancel_leftovers(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @staticmethod
    async def _cancel_leftovers() -> None:
        """gRPC's own tasks may outlive the channels by a moment; end them before the loop."""
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def call(self, request: Request) -> Reply:
        return self.run(self._call(request), timeout=REQUEST_TIMEOUT_S + 5)

    async def _call(self, request: Request) -> Reply:
        """One ASGI request; a Server-Sent Events answer counts as complete at its first frame
        (the client then goes away, as a closed browser tab does)."""
        pending = list(request.chunks)
        read = 0
        gone = asyncio.Event()
        done = asyncio.Event()
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def receive() -> Message:
            nonlocal read
            if pending:
                read += 1
                return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
            if read == 0:
                read = 1
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.append(message.get("body", b""))
            streaming = dict(start.get("headers", [])).get(b"content-type", b"")
            if not message.get("more_body", False) or streaming.startswith(b"text/event-stream"):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": quote(request.path, safe="/").encode("ascii"),
            "query_string": request.query,
            "root_path": "",
            "headers": list(request.headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        app = asyncio.create_task(self.app(scope, receive, send))
        finished = asyncio.create_task(done.wait())
        try:
            await asyncio.wait(
                {app, finished}, timeout=REQUEST_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished.cancel()
            gone.set()  # a stream ends when its client goes away
            await asyncio.wait({app}, timeout=5)
            if not app.done():
                app.cancel()
        if app.done() and not app.cancelled() and app.exception() is not None:
            raise AssertionError(f"the app raised {app.exception()!r}")
        assert done.is_set(), f"no complete answer within {REQUEST_TIMEOUT_S} s (a hang)"
        return Reply(
            status=start["status"],
            headers={bytes(k).lower(): bytes(v) for k, v in start["headers"]},
            body=b"".join(body),
            chunks_read=read,
        )


# -- what the fuzzer knows of the world ----------------------------------------------------------


@dataclass
class World:
    event_ids: list[str]
    reservation_ids: list[str]
    hold_tokens: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    sent: int = 0


PATHS = ["/api/events", "/api/stream", "/api/holds", "/healthz", "/", "/static/app.js"]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/merge-patch+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
    ";",
    "application/json\x00",
]
# Each passes str.isdigit() or str.isnumeric(); none is a quantity.
UNICODE_DIGITS = ["²", "٣", "৫", "\uff11", "Ⅻ", "⁹", "\U0001d7d8"]


def texts() -> st.SearchStrategy[str]:
    """Strings a hostile client sends: control characters, NULs, non-ASCII, long ones."""
    return st.one_of(
        st.text(max_size=40),
        st.text(st.characters(max_codepoint=0x20), max_size=10),
        st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "🎟️", "null", "1e3", "-0"]),
        st.sampled_from(UNICODE_DIGITS),
        st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(100, 5000)),
    )


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-3, 12),
        st.integers(),
        st.sampled_from([2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63, 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), numbers(), texts())
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(), inner, max_size=4),
        max_leaves=10,
    )


def hold_bodies(world: World) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies shaped like the page's, each field sometimes right, often wrong."""
    event_ids = st.sampled_from(world.event_ids) | st.builds(lambda: str(uuid.uuid4())) | texts()
    quantities = st.integers(1, 3) | numbers() | texts() | st.sampled_from(UNICODE_DIGITS)
    tokens = st.sampled_from(world.hold_tokens) | texts() | numbers()
    fields = {
        "event_id": event_ids | json_values(),
        "quantity": quantities | json_values(),
        "ticket_type": st.sampled_from(["dinner", "experience-only", "experience_only", "VIP"])
        | json_values(),
        "customer_ref": texts() | json_values(),
        "idempotency_key": texts() | st.builds(lambda: str(uuid.uuid4())),
        "hold_token": tokens,
    }
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def bodies(draw: st.DrawFn, world: World) -> bytes:
    kind = draw(
        st.sampled_from(["near"] * 3 + ["hold"] * 2 + ["json", "nested", "bytes", "big", "empty"])
    )
    if kind == "near":
        # A body the page could have sent, with at most one field changed: these get past the
        # gateway's checks into the services and the database.
        valid = {
            "event_id": draw(st.sampled_from(world.event_ids)),
            "quantity": draw(st.integers(1, 3)),
            "ticket_type": draw(st.sampled_from(["dinner", "experience-only"])),
            "idempotency_key": str(uuid.uuid4()),
            "hold_token": draw(st.sampled_from(world.hold_tokens)),
        }
        changed = draw(st.none() | st.sampled_from([*valid, "customer_ref"]))
        if changed is not None:
            valid[changed] = draw(texts() | numbers() | json_values())
        return json.dumps(valid).encode()
    if kind == "hold":
        # ensure_ascii=False puts raw non-ASCII (and lone surrogates, escaped) on the wire.
        text = json.dumps(draw(hold_bodies(world)), ensure_ascii=draw(st.booleans()))
        return text.encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(json_values())).encode()
    if kind == "nested":
        depth = draw(st.integers(1, 60_000))
        if draw(st.booleans()):
            return b"[" * depth + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "big":
        piece = draw(st.sampled_from([b" ", b"[", b"9", b'{"a":1}', b"\x00"]))
        return piece * draw(st.integers(BODY_LIMIT - 64, 4 * BODY_LIMIT))
    return b""


def reservation_ids(world: World) -> st.SearchStrategy[str]:
    return (
        st.sampled_from(world.reservation_ids)
        | st.builds(lambda: str(uuid.uuid4()))
        | st.text(st.characters(exclude_characters="/"), min_size=1, max_size=60)
        | st.sampled_from(["..", "%2F", "%00", "\x00", " ", "🎟️", "a" * 5000])
    )


@st.composite
def targets(draw: st.DrawFn, world: World) -> tuple[str, str]:
    """Method and path: mostly the hold endpoints (where bodies matter), then the read-only
    ones, then anything at all under /api and elsewhere."""
    kind = draw(st.sampled_from(["hold"] * 3 + ["pay"] * 2 + ["read"] * 2 + ["any"] * 3))
    if kind == "hold":
        return "POST", "/api/holds"
    if kind == "pay":
        action = draw(st.sampled_from(["pay", "cancel"]))
        return "POST", f"/api/holds/{draw(reservation_ids(world))}/{action}"
    if kind == "read":
        return draw(st.sampled_from(["GET", "HEAD"])), draw(st.sampled_from(PATHS))
    method = draw(
        st.sampled_from(METHODS)
        | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
    )
    path = draw(
        st.sampled_from(PATHS)
        | st.builds(
            lambda i, a: f"/api/holds/{i}/{a}", reservation_ids(world), st.text(max_size=10)
        )
        | st.builds(lambda rest: "/api/" + rest, st.text(max_size=40))
        | st.builds(lambda rest: "/static/" + rest, st.text(max_size=20))
    )
    return method, path


@st.composite
def requests(draw: st.DrawFn, world: World) -> Request:
    method, path = draw(targets(world))
    body = draw(bodies(world)) if method != "GET" or draw(st.booleans()) else b""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"gateway")]
    content_type = draw(st.sampled_from(["json"] * 6 + ["none", "other"]))
    if content_type == "json":
        headers.append((b"content-type", b"application/json"))
    elif content_type == "other":
        value = draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=30))
        headers.append((b"content-type", value.encode("utf-8", "surrogatepass")))
    length = draw(st.sampled_from(["true"] * 5 + ["none", "small", "big", "huge", "junk", "twice"]))
    if length == "true":
        headers.append((b"content-length", str(len(body)).encode()))
    elif length == "small":
        headers.append((b"content-length", str(max(0, len(body) - 5)).encode()))
    elif length == "big":
        headers.append((b"content-length", str(len(body) + 100).encode()))
    elif length == "huge":
        headers.append((b"content-length", str(draw(st.integers(BODY_LIMIT + 1, 2**70))).encode()))
    elif length == "junk":
        junk = draw(st.sampled_from(["-1", "1e3", "²", " 12", "0x10", "", "9" * 30, "1,2"]))
        headers.append((b"content-length", junk.encode()))
    elif length == "twice":
        headers += [(b"content-length", b"1"), (b"content-length", str(len(body)).encode())]
    for extra_name, extra_value in draw(
        st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=3)
    ):
        headers.append((extra_name.lower(), extra_value))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = tuple(body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True))
    query = draw(st.binary(max_size=30))
    return Request(method, path, query, tuple(headers), chunks)


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tag = uuid.uuid4().hex[:8]
    feed = Feed(stream=f"T_GWFUZZ_{tag}", subject_prefix=f"tgwfuzz{tag}.event")
    # Holds live an hour: the expirer changes no row while the fuzzer compares snapshots.
    with System(
        stack, feed, log_dir=tmp_path_factory.mktemp("gateway-fuzz-logs"), hold_ttl_s=3600
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(system: System) -> Iterator[GatewayThread]:
    running = GatewayThread(
        Settings(
            reservation_addr=system.reservation_addr,
            availability_addr=system.availability_addr,
            client_security=system.client_security(BOOKING, READER, subject="gateway"),
            rpc_timeout_s=5.0,
            max_body_bytes=BODY_LIMIT,
            demo_payments=True,  # the simulated Pay is fuzzed too
            holds_per_minute=0,  # thousands of holds from one address, on purpose
        )
    )
    running.start()
    yield running
    running.stop()


def seed_world(system: System, gateway: GatewayThread) -> World:
    """Two events and a few holds on them, so that generated requests reach the database."""
    events = [
        system.seed_event(f"GWF-{n}", capacity=EVENT_CAPACITY, experience_only_price=500_000)
        for n in range(2)
    ]
    world = World(event_ids=[ev.id for ev in events], reservation_ids=[], hold_tokens=[])
    for event in events:
        for _ in range(3):
            body = json.dumps({"event_id": event.id, "quantity": 1}).encode()
            reply = gateway.call(
                Request(
                    "POST",
                    "/api/holds",
                    headers=((b"content-type", b"application/json"),),
                    chunks=(body,),
                )
            )
            assert reply.status == 201, reply.body
            world.reservation_ids.append(reply.json()["reservation_id"])
            world.hold_tokens.append(reply.json()["hold_token"])
    return world


def check(reply: Reply, request: Request) -> None:
    assert reply.status < 500, (reply.status, reply.body[:500])
    if reply.status >= 400 and request.path.startswith("/api/") and request.method != "HEAD":
        body = reply.json()
        assert isinstance(body, dict) and set(body) == {"error", "code"}, body
        assert isinstance(body["error"], str) and body["error"].strip(), body
    if reply.status == 413:
        # Refused before the body was read, or as soon as it passed the limit.
        before_last = request.chunks[: max(0, reply.chunks_read - 1)]
        assert sum(len(chunk) for chunk in before_last) <= BODY_LIMIT


def test_no_request_gets_a_5xx_or_changes_anything_when_refused(
    system: System, gateway: GatewayThread, capsys: pytest.CaptureFixture[str]
) -> None:
    world = seed_world(system, gateway)
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(world))
    def fuzz(request: Request) -> None:
        before = snapshot(system.database_url)
        reply = gateway.call(request)
        world.sent += 1
        world.statuses[reply.status] += 1
        check(reply, request)
        if reply.status >= 400:
            assert snapshot(system.database_url) == before, "a refused request changed rows"

    fuzz()
    codes = ", ".join(f"{status}: {n}" for status, n in sorted(world.statuses.items()))
    with capsys.disabled():
        print(
            f"\ngateway fuzz: {world.sent} requests in {time.monotonic() - started:.0f} s;"
            f" statuses {codes}"
        )
