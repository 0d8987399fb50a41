"""The one gRPC client: channel options that suit the servers, readable errors, paging, backoff
and a watch that resumes from the versions it has seen. Fakes stand in for the stubs: no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from slotlock import client
from slotlock.grpc_server import SERVER_OPTIONS
from slotlock.v1 import availability_pb2, catalog_pb2, reservation_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_clients_never_ping_more_often_than_the_servers_allow() -> None:
    server = dict(SERVER_OPTIONS)
    options = dict(client.CHANNEL_OPTIONS)
    assert (
        options["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert options["grpc.max_reconnect_backoff_ms"] <= 5_000


@pytest.mark.parametrize(
    ("code", "details", "address", "expected"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: connection refused",
            None,
            "the reservation service is not reachable right now",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "",
            "127.0.0.1:1",
            "the reservation service at 127.0.0.1:1 is not reachable (is it running?)",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "the database is not reachable",
            None,
            "the reservation service is unavailable: the database is not reachable",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            None,
            "the reservation service did not answer in time",
        ),
        (grpc.StatusCode.CANCELLED, "", None, "the reservation service went away"),
        (
            grpc.StatusCode.INTERNAL,
            "internal error; see the service log",
            None,
            "the reservation service failed: internal error; see the service log",
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "not enough seats:\n 2 left",
            None,
            "not enough seats: 2 left (failed precondition)",
        ),
    ],
)
def test_describe_error(
    code: grpc.StatusCode, details: str, address: str | None, expected: str
) -> None:
    error = FakeRpcError(code, details)
    assert client.describe_error(error, "reservation", address=address) == expected


def test_describe_error_names_the_deadline_when_given() -> None:
    error = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert client.describe_error(error, "availability", address="h:1", timeout_s=3.0) == (
        "the availability service at h:1 did not answer within 3s"
    )


async def test_paginate_follows_next_page_tokens() -> None:
    seen: list[str] = []

    async def list_events(
        request: reservation_pb2.ListEventsRequest, *, timeout: float | None = None
    ) -> reservation_pb2.ListEventsResponse:
        assert request.page_size == 2 and request.from_date == "2030-01-01" and timeout == 1
        seen.append(request.page_token)
        pages = {"": ("t1", ["a", "b"]), "t1": ("t2", ["c", "d"]), "t2": ("", ["e"])}
        token, codes = pages[request.page_token]
        return reservation_pb2.ListEventsResponse(
            events=[catalog_pb2.Event(code=code) for code in codes], next_page_token=token
        )

    pages = client.paginate(
        list_events,
        reservation_pb2.ListEventsRequest(page_size=2, from_date="2030-01-01"),
        lambda reply: reply.events,
        timeout=1,
    )
    assert [event.code async for event in pages] == ["a", "b", "c", "d", "e"]
    assert seen == ["", "t1", "t2"]


def test_backoff_doubles_up_to_its_bound_with_jitter() -> None:
    backoff = client.Backoff(initial_s=0.2, max_s=5.0, jitter=0.2)
    assert [backoff.delay(n, 0.5) for n in range(7)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    )
    assert backoff.delay(0, 0.0) == pytest.approx(0.16)
    assert backoff.delay(10, 0.999999) == pytest.approx(6.0, rel=1e-5)
    assert backoff.delay(10_000, 0.5) == 5.0


def update(event_id: str, version: int) -> availability_pb2.EventAvailability:
    return availability_pb2.EventAvailability(event_id=event_id, version=version)


class FakeCall:
    def __init__(self, updates: list[availability_pb2.EventAvailability], end: Exception | None):
        self._updates, self._end = updates, end
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[availability_pb2.EventAvailability]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[availability_pb2.EventAvailability]:
        for item in self._updates:
            yield item
        if self._end is not None:
            raise self._end
        await asyncio.Event().wait()  # a live stream: nothing more for now

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeAvailability:
    """Each WatchAvailability call plays the next script: updates, then how the stream ends."""

    def __init__(
        self, scripts: list[tuple[list[availability_pb2.EventAvailability], Exception | None]]
    ):
        self.scripts = scripts
        self.requests: list[availability_pb2.WatchAvailabilityRequest] = []
        self.calls: list[FakeCall] = []

    def WatchAvailability(self, request: availability_pb2.WatchAvailabilityRequest) -> FakeCall:
        self.requests.append(request)
        call = FakeCall(*self.scripts.pop(0))
        self.calls.append(call)
        return call


class FakeHealth:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses

    async def Check(
        self, request: health_pb2.HealthCheckRequest, *, timeout: float | None = None
    ) -> health_pb2.HealthCheckResponse:
        status = self.statuses.pop(0) if self.statuses else health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse(status=status)


async def test_the_watch_resumes_from_what_it_has_seen_and_skips_what_is_not_newer() -> None:
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    stub = FakeAvailability(
        [
            ([update("a", 1), update("a", 3), update("a", 2), update("b", 1)], unavailable),
            ([update("a", 3), update("a", 4)], None),
        ]
    )
    health = FakeHealth([health_pb2.HealthCheckResponse.NOT_SERVING])
    statuses: list[tuple[bool, str]] = []
    watch = client.AvailabilityWatch(
        stub,  # type: ignore[arg-type]
        health,
        event_ids=["b", "a"],
        known_versions={"a": 0},
        backoff=client.Backoff(initial_s=0, max_s=0),
        on_status=lambda live, reason: statuses.append((live, reason)),
    )
    seen = []
    async for item in watch:
        seen.append((item.event_id, item.version))
        if len(seen) == 4:
            break
    assert seen == [("a", 1), ("a", 3), ("b", 1), ("a", 4)]
    assert statuses == [
        (False, "the availability service is starting up"),
        (True, "live"),
        (False, "the availability service is not reachable right now"),
        (True, "live"),
    ]
    assert list(stub.requests[0].event_ids) == ["a", "b"]
    assert dict(stub.requests[0].known_versions) == {"a": 0}
    assert dict(stub.requests[1].known_versions) == {"a": 3, "b": 1}
    assert watch.known_versions == {"a": 4, "b": 1}
    assert stub.calls[0].cancelled


async def test_a_refusal_ends_the_watch_unless_every_status_is_retried() -> None:
    refused = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "event_ids: not a UUID")
    stub = FakeAvailability([([], refused)])
    watch = client.AvailabilityWatch(stub, FakeHealth([]))  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError):
        async for _ in watch:
            pass

    stub = FakeAvailability([([], refused), ([update("a", 1)], None)])
    statuses: list[tuple[bool, str]] = []
    watch = client.AvailabilityWatch(
        stub,  # type: ignore[arg-type]
        FakeHealth([]),
        backoff=client.Backoff(initial_s=0, max_s=0),
        retry_codes=None,
        on_status=lambda live, reason: statuses.append((live, reason)),
    )
    async for item in watch:
        assert item.event_id == "a"
        break
    assert statuses[1] == (False, "event_ids: not a UUID (invalid argument)")


def test_ticket_types_come_from_the_generated_enum() -> None:
    assert dict(client.TICKET_TYPES) == {"dinner": 1, "experience-only": 2}
    assert client.ticket_type_name(2) == "experience-only"
    assert client.ticket_type_name(0) == client.ticket_type_name(99) == "dinner"
