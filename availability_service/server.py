"""Wires the service together: feed consumer, view, gRPC server with health and reflection.

Health reports NOT_SERVING (for "" and the service name) until the view is rebuilt, so load
balancers and ``ServiceProcess.wait_serving`` only send traffic to a replica that knows the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from availability_service import servicer
from availability_service.consumer import FeedConsumer
from availability_service.settings import Settings
from availability_service.view import AvailabilityView
from slotlock.grpc_server import add_port, create_server
from slotlock.v1 import availability_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"].full_name


class AvailabilityServer:
    """One availability replica. ``start()`` returns once the port is bound; the view becomes
    ready (and health SERVING) in the background."""

    def __init__(self, settings: Settings, *, heartbeat_s: float = 1.0) -> None:
        self.settings = settings
        self.view = AvailabilityView(settings.badge_policy, settings.max_watchers)
        self.consumer = FeedConsumer(
            settings.nats_url, settings.feed, self.view, heartbeat_s=heartbeat_s
        )
        self.health = health.aio.HealthServicer()
        self.server = create_server(settings.security)
        self.port = 0
        self._ready_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> AvailabilityServer:
        servicer.add_to_server(servicer.AvailabilityServicer(self.view), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self.settings.security.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = add_port(
            self.server, self.settings.host, self.settings.port, self.settings.security
        )
        await self.server.start()
        log.info("availability service listening on %s", self.address)
        await self.consumer.start()
        self._ready_task = asyncio.create_task(self._serve_when_ready())
        return self

    async def _serve_when_ready(self) -> None:
        await self.view.wait_ready()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING with %d events", len(self.view.views))

    async def stop(self, grace: float = 2.0) -> None:
        """Stop taking calls, end the watch streams, let unary calls finish within ``grace``."""
        await self.health.enter_graceful_shutdown()
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
        self.view.hub.close_all()
        await self.server.stop(grace)
        await self.consumer.stop()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()
