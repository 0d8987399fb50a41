"""Who may call what, over which connection, against both services running in-process.

The role table is the contract's (``(slotlock.v1.access)`` on each RPC, read by
``slotlock.auth.role_table``): every RPC of both services is called with no credential and with
each role, and the outcome must follow the table. A call "gets past auth" when it ends with any
status but UNAUTHENTICATED or PERMISSION_DENIED (an empty request is usually INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from slotlock import auth
from slotlock.auth import AuthSettings
from slotlock.feed import Feed
from slotlock.grpc_server import ServerSecurity
from slotlock.identity import ADMIN, BOOKING, READER
from slotlock.tls import ClientTLS, ServerTLS
from slotlock.v1 import availability_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli import builders
from slotlock_cli.certs import DevCA
from slotlock_cli.devstack import DevStack
from tests.support import (
    TEST_JWT_SECRET,
    TEST_SECURITY,
    StartReservation,
    open_channel,
    token_for,
)

REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
CALLERS: dict[str, tuple[str, ...] | None] = {
    "nobody": None,
    READER: (READER,),
    BOOKING: (BOOKING,),
    ADMIN: (ADMIN,),
}
FILES = {
    "ReservationService": reservation_pb2.DESCRIPTOR,
    "AvailabilityService": availability_pb2.DESCRIPTOR,
}


def request_class(full_method: str) -> tuple[Any, bool]:
    """The request message class of ``/slotlock.v1.Service/Method`` and whether it streams."""
    _, service, method = full_method.split("/")
    short = service.rsplit(".", 1)[-1]
    descriptor = FILES[short].services_by_name[short].methods_by_name[method]
    module = reservation_pb2 if short == "ReservationService" else availability_pb2
    return getattr(module, descriptor.input_type.name), descriptor.server_streaming


async def call(channel: grpc.aio.Channel, full_method: str) -> grpc.StatusCode:
    """Call with a default request; the status it ends with (OK for a stream that opened)."""
    message, streaming = request_class(full_method)
    serialize = message.SerializeToString
    try:
        if streaming:
            stream = channel.unary_stream(full_method, request_serializer=serialize)
            watch = stream(message(), timeout=1.0)
            await watch.read()  # the first state, or a refusal
            watch.cancel()
        else:
            await channel.unary_unary(full_method, request_serializer=serialize)(
                message(), timeout=5.0
            )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def addresses(
    start_reservation: StartReservation, stack: DevStack, feed: Feed
) -> AsyncIterator[dict[str, str]]:
    reservation = await start_reservation()
    availability = await AvailabilityServer(
        AvailabilitySettings(nats_url=stack.nats_url, feed=feed, port=0, security=TEST_SECURITY)
    ).start()
    await asyncio.wait_for(availability.view.wait_ready(), 30)
    yield {
        "ReservationService": f"127.0.0.1:{reservation.port}",
        "AvailabilityService": availability.address,
    }
    await availability.stop(grace=0)


async def test_every_rpc_with_every_role_follows_the_role_table(
    addresses: dict[str, str],
) -> None:
    table = auth.role_table()
    assert len(table) == 16  # every RPC of both services (ExtendHold, ListChanges: issue 12)
    outcomes: dict[tuple[str, str], str] = {}
    for caller, roles in CALLERS.items():
        for full_method, allowed in table.items():
            service = full_method.split("/")[1].rsplit(".", 1)[-1]
            token = "" if roles is None else token_for(*roles, subject=f"test-{caller}")
            async with open_channel(addresses[service], token=token) as channel:
                code = await call(channel, full_method)
            if roles is None:
                expected = "UNAUTHENTICATED"
            elif set(roles) & allowed:
                expected = "past auth"
            else:
                expected = "PERMISSION_DENIED"
            got = code.name if code in REFUSALS else "past auth"
            if got != expected:
                outcomes[(caller, full_method)] = f"{got} (expected {expected})"
    assert outcomes == {}


async def test_refusals_say_why(addresses: dict[str, str]) -> None:
    address = addresses["ReservationService"]
    method = "/slotlock.v1.ReservationService/ListReservations"
    cases = {
        "": (grpc.StatusCode.UNAUTHENTICATED, "no credentials"),
        token_for(READER, subject="svc-reader"): (
            grpc.StatusCode.PERMISSION_DENIED,
            "svc-reader may not call ListReservations: it needs the role admin (roles held: reader)",
        ),
        auth.mint_token("another-secret-of-at-least-32-bytes!!", [ADMIN], "x"): (
            grpc.StatusCode.UNAUTHENTICATED,
            "signature is not valid",
        ),
        auth.mint_token(TEST_JWT_SECRET, [ADMIN], "x", ttl=-timedelta(minutes=5)): (
            grpc.StatusCode.UNAUTHENTICATED,
            "has expired",
        ),
        auth.mint_token(TEST_JWT_SECRET, [ADMIN], "x", audience="billing"): (
            grpc.StatusCode.UNAUTHENTICATED,
            "not meant for this service",
        ),
        "not-a-jwt": (grpc.StatusCode.UNAUTHENTICATED, "not valid"),
    }
    for token, (code, words) in cases.items():
        async with open_channel(address, token=token) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(
                    method,
                    request_serializer=reservation_pb2.ListReservationsRequest.SerializeToString,
                )(reservation_pb2.ListReservationsRequest(), timeout=5)
        assert refused.value.code() == code, token
        assert words in (refused.value.details() or ""), token


async def test_health_and_reflection_stay_open(addresses: dict[str, str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for address in addresses.values():
        async with open_channel(address, token="") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_booking_caller_needs_the_hold_token_to_read_a_reservation(
    start_reservation: StartReservation,
) -> None:
    server = await start_reservation()
    address = f"127.0.0.1:{server.port}"
    async with (
        open_channel(address, ADMIN) as admin_channel,
        open_channel(address, BOOKING) as booking_channel,
    ):
        admin = reservation_pb2_grpc.ReservationServiceStub(admin_channel)
        booking = reservation_pb2_grpc.ReservationServiceStub(booking_channel)
        event = await admin.UpsertEvent(builders.event_request("SEC-1", 5))
        held = await booking.CreateHold(
            reservation_pb2.CreateHoldRequest(
                event_id=event.id, quantity=1, customer_ref="c", idempotency_key="k-sec-1"
            )
        )
        rid = held.reservation.id

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await booking.GetReservation(reservation_pb2.GetReservationRequest(reservation_id=rid))
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hold_token" in (missing.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await booking.GetReservation(
                reservation_pb2.GetReservationRequest(reservation_id=rid, hold_token="0" * 64)
            )
        assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED

        mine = await booking.GetReservation(
            reservation_pb2.GetReservationRequest(reservation_id=rid, hold_token=held.hold_token)
        )
        assert mine.id == rid
        # An admin reads any reservation without its token.
        seen = await admin.GetReservation(reservation_pb2.GetReservationRequest(reservation_id=rid))
        assert seen.id == rid


# ---- TLS and mutual TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.create(tmp_path_factory.mktemp("pki"))


async def list_events(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await reservation_pb2_grpc.ReservationServiceStub(channel).ListEvents(
            reservation_pb2.ListEventsRequest(), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def list_reservations(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await reservation_pb2_grpc.ReservationServiceStub(channel).ListReservations(
            reservation_pb2.ListReservationsRequest(), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_tls_serves_tls_clients_and_refuses_plain_text(
    start_reservation: StartReservation, ca: DevCA
) -> None:
    server_cert = ca.server_cert()
    server = await start_reservation(
        security=ServerSecurity(
            auth=TEST_SECURITY.auth,
            tls=ServerTLS(cert_file=str(server_cert.cert_file), key_file=str(server_cert.key_file)),
        )
    )
    address = f"localhost:{server.port}"
    tls = ClientTLS(ca_file=str(ca.cert_file))
    async with open_channel(address, READER, tls=tls) as channel:
        assert await list_events(channel) == grpc.StatusCode.OK
    async with open_channel(address, tls=tls, token="") as channel:
        assert await list_events(channel) == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(address, READER) as plain:
        assert await list_events(plain) == grpc.StatusCode.UNAVAILABLE
    other_ca = DevCA.create(ca.folder / "other")
    async with open_channel(address, READER, tls=ClientTLS(ca_file=str(other_ca.cert_file))) as c:
        assert await list_events(c) == grpc.StatusCode.UNAVAILABLE  # server not trusted


async def test_mutual_tls_maps_the_client_certificate_to_roles(
    start_reservation: StartReservation, ca: DevCA
) -> None:
    server_cert = ca.server_cert("mtls-server")
    server = await start_reservation(
        security=ServerSecurity(
            auth=AuthSettings(
                client_cert_roles=(
                    ("ops", frozenset({ADMIN})),
                    ("gateway", frozenset({BOOKING, READER})),
                )
            ),
            tls=ServerTLS(
                cert_file=str(server_cert.cert_file),
                key_file=str(server_cert.key_file),
                client_ca_file=str(ca.cert_file),
            ),
        )
    )
    address = f"localhost:{server.port}"

    def client_tls(identity: str | None) -> ClientTLS:
        if identity is None:
            return ClientTLS(ca_file=str(ca.cert_file))
        files = ca.client_cert(identity)
        return ClientTLS(
            ca_file=str(ca.cert_file), cert_file=str(files.cert_file), key_file=str(files.key_file)
        )

    async with open_channel(address, token="", tls=client_tls("ops")) as ops:
        assert await list_reservations(ops) == grpc.StatusCode.OK
    async with open_channel(address, token="", tls=client_tls("gateway")) as gateway:
        assert await list_events(gateway) == grpc.StatusCode.OK
        assert await list_reservations(gateway) == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(address, token="", tls=client_tls("stranger")) as stranger:
        assert await list_events(stranger) == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(address, token="", tls=client_tls(None)) as no_cert:
        assert await list_events(no_cert) == grpc.StatusCode.UNAVAILABLE  # handshake refused


async def test_a_server_without_a_way_to_authenticate_does_not_start(
    stack: DevStack, feed: Feed
) -> None:
    from slotlock.settings import SettingsError

    with pytest.raises(SettingsError, match="no way to authenticate callers"):
        AvailabilityServer(AvailabilitySettings(nats_url=stack.nats_url, feed=feed, port=0))
