"""The gRPC health service of one server, with readiness and liveness kept apart.

- Readiness, under ``""`` and the service's full name: SERVING only while the replica can do its
  job (its dependencies answer, it is not draining). Load balancers and Kubernetes readiness
  probes route by it; a replica that is NOT_SERVING keeps running and turns SERVING by itself.
- Liveness, under ``"liveness"``: SERVING while the process and its event loop run, whatever its
  dependencies do. A liveness probe must not restart a replica because Postgres or NATS is down:
  a restart cannot fix that, and would drop every call and watcher it has.

On drain everything turns NOT_SERVING, for good (``grpc_health``'s graceful shutdown ignores later
changes), so a probe racing the drain cannot flip a stopping replica back.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

LIVENESS = "liveness"
SERVICE_NAME = health.SERVICE_NAME
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self, service_name: str) -> None:
        self.servicer = health.aio.HealthServicer()
        self.readiness_names = ("", service_name)
        self.serving = False
        self.draining = False

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self, *, serving: bool) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        self.serving = not serving  # so that set_serving records it
        await self.set_serving(serving)

    async def set_serving(self, serving: bool) -> bool:
        """Set readiness; True when it changed."""
        if serving == self.serving or self.draining:
            return False
        self.serving = serving
        for name in self.readiness_names:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)
        return True

    async def drain(self) -> None:
        """NOT_SERVING everywhere, from now until the process ends."""
        if self.draining:
            return
        self.draining = True
        self.serving = False
        await self.servicer.enter_graceful_shutdown()
