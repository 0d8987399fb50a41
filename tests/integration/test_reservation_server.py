"""The reservation server as operators see it: health and reflection. (Its settings are read by
pure code, tested in tests/unit/test_reservation_settings.py.)"""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import StartReservation, open_channel


async def test_health_and_reflection(start_reservation: StartReservation) -> None:
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
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
