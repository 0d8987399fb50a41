"""Fuzz every RPC of both services, as a hostile client would, on real Postgres and NATS.

Requests are generated from the contract's descriptors, so a new RPC or field is fuzzed without
touching this file: strings with NUL and other control characters, non-ASCII and huge values,
values at and past every bound, unknown enum values, malformed ids, dates and page tokens, ids of
real events and holds (so that requests get past the id checks into the database), and raw bytes
that are not protobuf at all. For every request: no UNKNOWN, no INTERNAL, no hang; and a refused
request changes no row.

The default run is short enough for CI; ``SLOTLOCK_FUZZ_EXAMPLES=20000`` makes a long one. Both
services run in-process on an event loop of their own, so the test can drive them with
hypothesis through plain blocking stubs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from reservation_service.server import ReservationServer
from reservation_service.settings import Settings as ReservationSettings
from slotlock import bounds
from slotlock.feed import Feed
from slotlock.v1 import availability_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli.builders import event_request
from slotlock_cli.devstack import DevStack
from tests.support import TEST_SECURITY, snapshot, token_for

EXAMPLES = int(os.environ.get("SLOTLOCK_FUZZ_EXAMPLES", "300"))
CALL_TIMEOUT_S = 10.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}

RESERVATION = reservation_pb2.DESCRIPTOR.services_by_name["ReservationService"]
AVAILABILITY = availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"]
METHODS: list[MethodDescriptor] = [*RESERVATION.methods, *AVAILABILITY.methods]


@dataclass
class World:
    """Real ids the fuzzer mixes in, and what it saw."""

    event_ids: list[str]
    reservation_ids: list[str]
    hold_tokens: list[str]
    codes: Counter[str] = field(default_factory=Counter)
    sent: int = 0


class InProcessServices:
    """Both services on a private event loop in a thread: the test's blocking calls never stall
    the servers they are calling."""

    def __init__(
        self, reservation: ReservationSettings, availability: AvailabilitySettings
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._reservation_settings = reservation
        self._availability_settings = availability
        self.reservation: ReservationServer | None = None
        self.availability: AvailabilityServer | None = None

    def _run(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.reservation, self.availability = self._run(self._start())

    async def _start(self) -> tuple[ReservationServer, AvailabilityServer]:
        # Built on the private loop: a grpc.aio server belongs to the loop it was made on.
        reservation = await ReservationServer(self._reservation_settings).start()
        availability = await AvailabilityServer(self._availability_settings).start()
        await asyncio.wait_for(availability.view.wait_ready(), 30)
        return reservation, availability

    def stop(self) -> None:
        if self.availability is not None:
            self._run(self.availability.stop(grace=0))
        if self.reservation is not None:
            self._run(self.reservation.stop(grace=0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def services(stack: DevStack, database_url: str, feed: Feed) -> Iterator[InProcessServices]:
    running = InProcessServices(
        ReservationSettings(
            database_url=database_url,
            nats_url=stack.nats_url,
            port=0,
            stream=feed.stream,
            subject_prefix=feed.subject_prefix,
            hold_token_secret="fuzz-secret-" + "x" * 32,
            security=TEST_SECURITY,
        ),
        AvailabilitySettings(nats_url=stack.nats_url, feed=feed, port=0, security=TEST_SECURITY),
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


# --- request generation from descriptors ------------------------------------------------------

NASTY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0, max_codepoint=0x10FFFF),
    max_size=40,
)
CONTROL_TEXT = st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=8)
SPECIAL_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "abc\x00def",
        "2026-12-24",
        "0001-01-01",
        "9999-12-31",
        "2026-W01-1",
        "2026-02-30",
        "19:00",
        "24:00",
        "23:59:59.999999+07:00",
        "Pacific/Kiritimati",
        "Etc/GMT-14",
        "Etc/GMT+12",
        "../../etc/passwd",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "00000000-0000-0000-0000-000000000000",
        "W1siMjAyNi0wMS0wMSIsICJ4Il0sICJzIl0",
        "eyJhIjpbIjIwMjYtVzAxLTEiLCJ1cm46dXVpZDoxIl0sInMiOiIifQ",
        "ÿ" * 300,
        "🎭" * 201,
        "x" * 100_000,
    ]
)


def near_bound(bound: int) -> st.SearchStrategy[str]:
    return st.sampled_from([bound - 1, bound, bound + 1]).map(lambda n: "é" * max(n, 0))


DATES = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01", "9999-12-31", "2026-W01-1", "20261224", "2026-12-24T10:00"]),
)
TIMES = st.one_of(
    st.times().map(lambda t: t.isoformat()),
    st.sampled_from(["00:00", "23:59", "19:00+07:00", "T19:00", "19:00:00.000001"]),
)
ZONES = st.sampled_from(
    ["Asia/Ho_Chi_Minh", "Pacific/Kiritimati", "Etc/GMT-14", "Etc/GMT+12", "UTC", "", "Mars/Base"]
)


def plausible(name: str, world: World) -> st.SearchStrategy[str] | None:
    """Values that get a request past the first checks, so the fuzzer reaches deeper code."""
    if name.endswith("_id") or name in ("event_ids", "key"):
        return st.one_of(
            st.sampled_from(world.event_ids + world.reservation_ids), st.uuids().map(str)
        )
    if name == "hold_token":
        return st.one_of(st.sampled_from(world.hold_tokens), NASTY_TEXT)
    if name.endswith("_date"):
        return DATES
    if name.endswith("_time"):
        return TIMES
    if name == "time_zone":
        return ZONES
    if name == "currency":
        return st.sampled_from(["VND", "vnd", "USD", "", "XXXX", "₫"])
    return None


def string_values(fd: FieldDescriptor, world: World) -> st.SearchStrategy[str]:
    choices = [
        NASTY_TEXT,
        CONTROL_TEXT,
        SPECIAL_STRINGS,
        st.uuids().map(str),
        st.sampled_from(world.event_ids),
        st.sampled_from(world.reservation_ids),
        st.sampled_from(world.hold_tokens),
    ]
    limit = bounds.bounds_of(fd).max_length
    if limit:
        choices.append(near_bound(limit))
    likely = plausible(fd.name, world)
    if likely is not None:
        return st.one_of(likely, likely, likely, *choices)
    return st.one_of(*choices)


def scalar_values(fd: FieldDescriptor, world: World) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        return string_values(fd, world)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(min_value=-3, max_value=12)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        edges = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]
        return st.one_of(st.sampled_from(edges), st.integers(-(2**63), 2**63 - 1))
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        edges = [0, 1, -1, 2, 5, 10, 11, 500, 501, 1_000_000, 1_000_001, 2**31 - 1, -(2**31)]
        return st.one_of(st.sampled_from(edges), st.integers(-(2**31), 2**31 - 1))
    raise AssertionError(f"no strategy for {fd.full_name} (type {kind})")


def message_values(descriptor: Descriptor, world: World, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = GetMessageClass(descriptor)
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if bounds.is_map(fd):
            key = string_values(fd.message_type.fields_by_name["key"], world)
            parts[fd.name] = st.one_of(
                st.dictionaries(key, st.integers(-(2**63), 2**63 - 1), max_size=4),
                st.just({str(uuid.UUID(int=n)): 1 for n in range(10_001)}),
            )
        elif fd.is_repeated:
            parts[fd.name] = st.one_of(
                st.lists(scalar_values(fd, world), max_size=4),
                st.just([str(uuid.UUID(int=n)) for n in range(10_001)]),
            )
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.full_name.startswith("google.protobuf") or depth > 1:
                continue
            parts[fd.name] = message_values(fd.message_type, world, depth + 1)
        else:
            parts[fd.name] = scalar_values(fd, world)
    optional = {name: st.one_of(st.none(), value) for name, value in parts.items()}
    return st.fixed_dictionaries(optional).map(
        lambda values: cls(**{k: v for k, v in values.items() if v is not None})
    )


@dataclass(frozen=True)
class Call:
    method: MethodDescriptor
    body: bytes  # serialized request, or raw bytes that are not one
    roles: tuple[str, ...] | None  # of the caller's token; None: no token at all

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [] if self.roles is None else [("authorization", f"Bearer {token_for(*self.roles)}")]


# Mostly an admin, who may call everything, so the fuzzer gets past authorization.
CALLERS = st.sampled_from(
    [("admin",)] * 6 + [("booking",), ("reader",), ("booking", "reader"), None]
)


def calls(world: World) -> st.SearchStrategy[Call]:
    def for_method(method: MethodDescriptor) -> st.SearchStrategy[Call]:
        encoded: st.SearchStrategy[bytes] = message_values(method.input_type, world).map(
            lambda message: message.SerializeToString()
        )
        raw = st.binary(min_size=1, max_size=64)
        bodies = st.one_of(encoded, encoded, encoded, raw)
        return st.builds(Call, st.just(method), bodies, CALLERS)

    return st.sampled_from(METHODS).flatmap(for_method)


def send(channel: grpc.Channel, call: Call) -> grpc.StatusCode:
    """Send one request; return the status it ended with (OK for a watch that started)."""
    path = f"/{call.method.containing_service.full_name}/{call.method.name}"
    reply = GetMessageClass(call.method.output_type)
    try:
        if call.method.server_streaming:
            stream = channel.unary_stream(path, response_deserializer=lambda b: b)(
                call.body, timeout=CALL_TIMEOUT_S, metadata=call.metadata
            )
            try:
                next(stream)
            except StopIteration:
                pass
            finally:
                stream.cancel()
        else:
            channel.unary_unary(path, response_deserializer=reply.FromString)(
                call.body, timeout=CALL_TIMEOUT_S, metadata=call.metadata
            )
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        if code is grpc.StatusCode.CANCELLED and call.method.server_streaming:
            return grpc.StatusCode.OK  # our own cancel of a watch that had started
        assert code not in FORBIDDEN, (
            f"{path} answered {code.name}: {error.details()}"  # type: ignore[attr-defined]
        )
        assert error.details(), f"{path}: {code.name} without a message"  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


# A long run gets the time it needs (the default per-test timeout is for the default run).
@pytest.mark.timeout(max(120, EXAMPLES // 4))
def test_fuzz_every_rpc(services: InProcessServices, database_url: str) -> None:
    assert services.reservation is not None and services.availability is not None
    reservation_address = f"127.0.0.1:{services.reservation.port}"
    with (
        grpc.insecure_channel(reservation_address) as reservation_channel,
        grpc.insecure_channel(services.availability.address) as availability_channel,
    ):
        world = seed_world(reservation_channel)
        channels = {
            RESERVATION.full_name: reservation_channel,
            AVAILABILITY.full_name: availability_channel,
        }

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(call=calls(world))
        def one_request(call: Call) -> None:
            before = snapshot(database_url)
            code = send(channels[call.method.containing_service.full_name], call)
            world.sent += 1
            world.codes[code.name] += 1
            if code is not grpc.StatusCode.OK:
                assert snapshot(database_url) == before, (
                    f"a refused {call.method.name} changed rows"
                )

        one_request()
    print(f"fuzz: {world.sent} requests; codes seen: {dict(world.codes.most_common())}")
    assert world.sent >= EXAMPLES
    assert world.codes["INVALID_ARGUMENT"] > 0 and world.codes["OK"] > 0


def seed_world(channel: grpc.Channel) -> World:
    """An event with seats and a few holds, whose ids and tokens the fuzzer mixes in."""
    stub = reservation_pb2_grpc.ReservationServiceStub(channel)
    admin = [("authorization", f"Bearer {token_for('admin')}")]
    event = stub.UpsertEvent(event_request("FUZZ-1", capacity=1000), timeout=10, metadata=admin)
    holds = [
        stub.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1),
            timeout=10,
            metadata=admin,
        )
        for _ in range(3)
    ]
    return World(
        event_ids=[event.id],
        reservation_ids=[h.reservation.id for h in holds],
        hold_tokens=[h.hold_token for h in holds],
    )
