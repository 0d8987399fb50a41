"""A request body that is not valid protobuf gets INVALID_ARGUMENT naming the message type, on
every RPC of both services (grpc.aio alone answers UNKNOWN and logs a traceback)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from slotlock.feed import Feed
from slotlock.v1 import availability_pb2, reservation_pb2
from slotlock_cli.devstack import DevStack
from tests.support import TEST_SECURITY, StartReservation, open_channel

# A truncated length and plain garbage are undecodable as any message; bad UTF-8 is, where
# field 1 is a string.
UNDECODABLE = [b"\x0a\x7f\x01", b"\xff\xff\xff\xff\xff"]
BAD_UTF8_IN_FIELD_1 = b"\x0a\x02\xff\xfe"


def methods(descriptor: FileDescriptor, service: str) -> list[tuple[str, str, bool, list[bytes]]]:
    found = descriptor.services_by_name[service]
    rpcs = []
    for m in found.methods:
        first = m.input_type.fields_by_number.get(1)
        string_first = first is not None and first.type == FieldDescriptor.TYPE_STRING
        bodies = [*UNDECODABLE, BAD_UTF8_IN_FIELD_1] if string_first else UNDECODABLE
        rpcs.append(
            (f"/{found.full_name}/{m.name}", m.input_type.full_name, m.server_streaming, bodies)
        )
    return rpcs


async def call_raw(
    channel: grpc.aio.Channel, path: str, streaming: bool, body: bytes
) -> tuple[grpc.StatusCode, str]:
    try:
        if streaming:
            call = channel.unary_stream(path)(body, timeout=5)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(body, timeout=5)
    except grpc.aio.AioRpcError as error:
        assert error.details(), error
        return error.code(), error.details()
    raise AssertionError(f"{path} accepted an undecodable request")


async def test_every_rpc_refuses_undecodable_bodies(
    start_reservation: StartReservation,
    stack: DevStack,
    feed: Feed,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reservation = await start_reservation()
    availability = await AvailabilityServer(
        AvailabilitySettings(nats_url=stack.nats_url, feed=feed, port=0, security=TEST_SECURITY)
    ).start()
    try:
        await asyncio.wait_for(availability.view.wait_ready(), 10)
        targets = [
            (
                f"127.0.0.1:{reservation.port}",
                methods(reservation_pb2.DESCRIPTOR, "ReservationService"),
            ),
            (availability.address, methods(availability_pb2.DESCRIPTOR, "AvailabilityService")),
        ]
        seen = 0
        with caplog.at_level(logging.WARNING):
            for address, rpcs in targets:
                async with open_channel(address) as channel:
                    for path, type_name, streaming, bodies in rpcs:
                        for body in bodies:
                            code, details = await call_raw(channel, path, streaming, body)
                            assert code is grpc.StatusCode.INVALID_ARGUMENT, (path, body, details)
                            assert details == f"the request could not be decoded as {type_name}"
                            seen += 1
        assert seen == sum(len(rpc[3]) for _, rpcs in targets for rpc in rpcs)
        assert seen > 2 * 14
        assert not [r for r in caplog.records if r.exc_info], "no traceback for bad input"
    finally:
        await availability.stop(grace=0)
