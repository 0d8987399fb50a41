"""The reservation server as operators see it: health, reflection, settings from the environment."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reservation_service.settings import Settings
from slotlock.errors import InvalidRequest
from tests.integration.conftest import StartReservation


async def test_health_and_reflection(start_reservation: StartReservation) -> None:
    server = await start_reservation()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "slotlock.v1.ReservationService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in reflection.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "slotlock.v1.ReservationService" in names
        assert "grpc.health.v1.Health" in names


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "SLOTLOCK_HOLD_TTL_S": "1.5",
            "SLOTLOCK_RESERVATION_PORT": "6000",
            "SLOTLOCK_RUN_RELAY": "no",
        }
    )
    assert (settings.hold_ttl_s, settings.port, settings.run_relay) == (1.5, 6000, False)
    assert Settings.from_env({}).hold_ttl_s == 300
    for env, words in (
        ({"SLOTLOCK_HOLD_TTL_S": "soon"}, "not a number"),
        ({"SLOTLOCK_RESERVATION_PORT": "70000"}, "between"),
        ({"SLOTLOCK_RUN_EXPIRER": "maybe"}, "true or false"),
    ):
        with pytest.raises(InvalidRequest, match=words):
            Settings.from_env(env)
