"""What an operator and a client program see of a running pair of services: google.rpc error
details and request ids on refusals, reflection v1 and v1alpha, the metrics endpoint after a
scripted run, and one trace from CreateHold to the availability update."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from slotlock import grpc_errors, metrics, tracing
from slotlock.feed import Feed
from slotlock.v1 import availability_pb2, availability_pb2_grpc, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from slotlock_cli.devstack import DevStack
from tests.support import TEST_SECURITY, StartReservation, open_channel


@contextlib.asynccontextmanager
async def availability(stack: DevStack, feed: Feed) -> AsyncIterator[AvailabilityServer]:
    settings = AvailabilitySettings(
        nats_url=stack.nats_url, feed=feed, port=0, security=TEST_SECURITY
    )
    server = await AvailabilityServer(settings, heartbeat_s=0.5).start()
    try:
        await asyncio.wait_for(server.view.wait_ready(), 10)
        yield server
    finally:
        await server.stop(grace=0)


async def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- error details --------------------------------------------------------------------------


async def test_refusals_carry_a_reason_details_and_the_request_id(
    reservation: ReservationServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    event = await reservation.UpsertEvent(event_request("DETAILS-1", capacity=3))
    with (
        caplog.at_level(logging.INFO, logger="slotlock.grpc_errors"),
        pytest.raises(grpc.aio.AioRpcError) as refused,
    ):
        await reservation.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=5),
            metadata=(("x-request-id", "req-from-the-client"),),
        )
    [line] = [r for r in caplog.records if "CreateHold failed" in r.getMessage()]  # one line
    assert line.levelno == logging.INFO
    assert line.fields == {  # type: ignore[attr-defined]
        "rpc": "/slotlock.v1.ReservationService/CreateHold",
        "code": "FAILED_PRECONDITION",
        "request_id": "req-from-the-client",
        "duration_ms": line.fields["duration_ms"],  # type: ignore[attr-defined]
        "reason": "NOT_ENOUGH_SEATS",
    }
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = grpc_errors.error_details(refused.value)
    assert details is not None
    assert details.reason == "NOT_ENOUGH_SEATS"
    assert details.metadata == {"seats_left": "3", "seats_requested": "5"}
    assert details.request_id == "req-from-the-client"

    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await reservation.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=0)
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = grpc_errors.error_details(invalid.value)
    assert details is not None and details.reason
    assert list(details.field_violations) == ["quantity"]
    assert details.request_id and len(details.request_id) == 16  # made by the server

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await reservation.GetEvent(
            reservation_pb2.GetEventRequest(event_id="00000000-0000-4000-8000-000000000000")
        )
    details = grpc_errors.error_details(missing.value)
    assert details is not None and details.reason == "EVENT_NOT_FOUND"


# --- reflection -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_v1_and_v1alpha(start_reservation: StartReservation, version: str) -> None:
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        replies = [reply async for reply in call]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {
        "slotlock.v1.ReservationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


# --- metrics --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    port = metrics.serve("127.0.0.1", free_port())
    yield f"http://127.0.0.1:{port}/metrics"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as http:
        reply = await http.get(url)
    reply.raise_for_status()
    return reply.text


async def test_metrics_after_a_scripted_run(
    start_reservation: StartReservation, stack: DevStack, feed: Feed, metrics_url: str
) -> None:
    before = await scrape(metrics_url)
    server = await start_reservation()
    async with (
        availability(stack, feed) as avail,
        open_channel(f"127.0.0.1:{server.port}") as channel,
        open_channel(avail.address) as avail_channel,
    ):
        stub = ReservationServiceStub(channel)
        watch = availability_pb2_grpc.AvailabilityServiceStub(avail_channel).WatchAvailability(
            availability_pb2.WatchAvailabilityRequest()
        )
        event = await stub.UpsertEvent(event_request("METRICS-1", capacity=10))
        holds = await asyncio.gather(
            *(
                stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1))
                for _ in range(4)
            )
        )
        first, second = holds[0], holds[1]
        await stub.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=first.reservation.id,
                hold_token=first.hold_token,
                payment_reference="PAY-1",
            )
        )
        await stub.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(
                reservation_id=second.reservation.id, hold_token=second.hold_token
            )
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=9))
        await wait_for(lambda: event.id in avail.view.views and avail.view.views[event.id])
        await wait_for(lambda: avail.view.messages[event.id].version >= event.version + 6)
        await watch.read()  # the watcher is registered and primed
        await asyncio.sleep(5.5)  # one round of the database gauges
        after = await scrape(metrics_url)
        watch.cancel()

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    rpc = {"grpc_service": "slotlock.v1.ReservationService"}
    assert grew("grpc_server_started_total", **rpc, grpc_method="CreateHold") == 5
    assert grew("grpc_server_handled_total", **rpc, grpc_method="CreateHold", grpc_code="OK") == 4
    assert (
        grew(
            "grpc_server_handled_total",
            **rpc,
            grpc_method="CreateHold",
            grpc_code="FAILED_PRECONDITION",
        )
        == 1
    )
    assert grew("grpc_server_handling_seconds_count", **rpc, grpc_method="ConfirmHold") == 1
    assert 0 < grew("grpc_server_handling_seconds_sum", **rpc, grpc_method="ConfirmHold") < 5
    assert grew("slotlock_hold_changes_total", change="created") == 4
    assert grew("slotlock_hold_changes_total", change="confirmed") == 1
    assert grew("slotlock_hold_changes_total", change="released") == 1
    assert 1 <= grew("slotlock_hold_batch_size_count") <= 5  # 4 concurrent holds batched + 1
    assert grew("slotlock_hold_batch_size_sum") == 5
    assert grew("slotlock_outbox_published_total") >= 7  # upsert + 4 holds + confirm + release
    assert sample(after, "slotlock_outbox_unpublished") == 0
    assert sample(after, "slotlock_outbox_oldest_unpublished_age_seconds") == 0
    assert sample(after, "slotlock_expiry_lag_seconds") == 0
    assert grew("slotlock_feed_changes_applied_total") >= 7
    assert grew("slotlock_feed_delay_seconds_count") >= 6  # live ones, after the rebuild
    assert 0 <= sample(after, "slotlock_feed_lag_seconds") < 5
    assert sample(after, "slotlock_view_events") >= 1
    assert sample(after, "slotlock_view_rebuild_seconds") < 10
    assert sample(after, "slotlock_watchers") == 1
    avail_rpc = {"grpc_service": "slotlock.v1.AvailabilityService"}
    assert grew("grpc_server_started_total", **avail_rpc, grpc_method="WatchAvailability") == 1


# --- traces ---------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(exporter, "slotlock-tests")
    try:
        yield exporter
    finally:
        tracing.shutdown()


async def test_one_trace_from_create_hold_to_the_availability_update(
    start_reservation: StartReservation,
    stack: DevStack,
    feed: Feed,
    spans: InMemorySpanExporter,
) -> None:
    server = await start_reservation()
    async with (
        availability(stack, feed) as avail,
        open_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("TRACE-1", capacity=10))
        await wait_for(lambda: event.id in avail.view.messages)
        spans.clear()
        hold = await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=2)
        )
        await wait_for(lambda: avail.view.messages[event.id].version > event.version)
        await wait_for(
            lambda: any(s.name == "availability apply" for s in spans.get_finished_spans())
        )

    finished = spans.get_finished_spans()
    [rpc] = [s for s in finished if s.name == "slotlock.v1.ReservationService/CreateHold"]
    trace_id = rpc.context.trace_id
    in_trace = {s.name: s for s in finished if s.context.trace_id == trace_id}
    assert {"CreateHold batch", "availability apply"} <= set(in_trace)
    batch, applied = in_trace["CreateHold batch"], in_trace["availability apply"]
    assert batch.parent is not None and batch.parent.span_id == rpc.context.span_id
    assert applied.parent is not None and applied.parent.span_id == batch.context.span_id
    assert applied.attributes is not None
    assert applied.attributes["slotlock.event_id"] == event.id
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code_name"] == "OK"
    assert hold.reservation.id
