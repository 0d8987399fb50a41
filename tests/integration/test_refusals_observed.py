"""A call refused by authentication is observed like any other failed call: counted by code,
given a request id, logged once, and answered with google.rpc details."""

from __future__ import annotations

import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from slotlock.grpc_errors import error_details
from slotlock.v1 import reservation_pb2, reservation_pb2_grpc
from tests.support import StartReservation, open_channel


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "slotlock.v1.ReservationService",
            "grpc_method": method,
            "grpc_type": "unary",
            "grpc_code": code,
        },
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("roles", "token", "code"),
    [((), "", "UNAUTHENTICATED"), (("reader",), None, "PERMISSION_DENIED")],
)
async def test_an_auth_refusal_is_counted_logged_once_and_detailed(
    start_reservation: StartReservation,
    caplog: pytest.LogCaptureFixture,
    roles: tuple[str, ...],
    token: str | None,
    code: str,
) -> None:
    server = await start_reservation()
    before = handled("CreateHold", code)
    caplog.set_level(logging.INFO)
    async with open_channel(f"127.0.0.1:{server.port}", *roles, token=token) as channel:
        stub = reservation_pb2_grpc.ReservationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateHold(
                reservation_pb2.CreateHoldRequest(event_id="x" * 65, quantity=1),
                metadata=(("x-request-id", "req-auth-1"),),
            )
    assert refused.value.code().name == code  # before the request's own bound is looked at
    details = error_details(refused.value)
    assert details is not None and details.reason and details.request_id == "req-auth-1"
    assert handled("CreateHold", code) == before + 1
    lines = [r for r in caplog.records if "CreateHold failed" in r.getMessage()]
    assert len(lines) == 1 and code in lines[0].getMessage()
