"""The server's interceptors, installed as one chain (``slotlock.grpc_errors.InterceptorChain``):
each still does its part on a real server, in the same order as when they were three."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from slotlock import reflection
from slotlock.auth import AuthSettings
from slotlock.grpc_errors import REQUEST_ID
from slotlock.grpc_server import ServerSecurity, create_server
from slotlock.v1 import catalog_pb2, reservation_pb2, reservation_pb2_grpc
from tests.support import TEST_JWT_SECRET

SERVICE = "slotlock.v1.ReservationService"


class Echo(reservation_pb2_grpc.ReservationServiceServicer):
    async def GetEvent(
        self, request: reservation_pb2.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Event:
        return catalog_pb2.Event(id=request.event_id)


async def serve(reflection_on: bool, auth: AuthSettings) -> tuple[grpc.aio.Server, str]:
    server = create_server(ServerSecurity(auth=auth, reflection=reflection_on))
    reservation_pb2_grpc.add_ReservationServiceServicer_to_server(Echo(), server)  # type: ignore[abstract]
    reflection.enable(server, (SERVICE,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def list_services(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request])):
            return [s.name for s in answer.list_services_response.service]
    return []


@pytest.mark.parametrize("reflection_on", [True, False])
async def test_reflection_is_hidden_when_switched_off(reflection_on: bool) -> None:
    server, address = await serve(reflection_on, AuthSettings(insecure_no_auth=True))
    try:
        if reflection_on:
            assert SERVICE in await list_services(address)
        else:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await list_services(address)
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)


async def test_authentication_then_bounds_then_handler_with_a_request_id() -> None:
    server, address = await serve(True, AuthSettings(jwt_secret=TEST_JWT_SECRET))
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = reservation_pb2_grpc.ReservationServiceStub(channel)
            # A stranger is told only that: the bound on event_id is not checked for it.
            with pytest.raises(grpc.aio.AioRpcError) as stranger:
                await stub.GetEvent(reservation_pb2.GetEventRequest(event_id="x" * 100_000))
            assert stranger.value.code() is grpc.StatusCode.UNAUTHENTICATED
            trailers = dict(stranger.value.trailing_metadata() or ())
            assert trailers.get(REQUEST_ID)
    finally:
        await server.stop(None)
