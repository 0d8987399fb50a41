"""Wires the service together: feed consumer, view, gRPC server with health and reflection.

Health reports NOT_SERVING (for "" and the service name) until the view is rebuilt, so load
balancers and ``ServiceProcess.wait_serving`` only send traffic to a replica that knows the state;
afterwards, whenever the replica is disconnected from NATS or more than ``max_feed_lag_s`` behind
the feed. Then watch streams end (UNAVAILABLE, "reconnect") and new ones are refused, so watchers
move to a replica that is live, or wait and show "updates paused"; reads answer from the last
known state. ``"liveness"`` stays SERVING while the process runs (``slotlock.health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time

from grpc_health.v1 import health

from availability_service import servicer
from availability_service.consumer import FeedConsumer
from availability_service.settings import Settings
from availability_service.view import AvailabilityView
from slotlock import logs, metrics, reflection, tracing
from slotlock.grpc_server import add_port, create_server
from slotlock.health import Health
from slotlock.process_title import set_title
from slotlock.v1 import availability_pb2

log = logging.getLogger(__name__)

# Tracked objects allocated (net of those freed) before a young collection; CPython's default 700.
YOUNG_GC_THRESHOLD = 50_000

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
        self.health = Health(SERVICE_NAME)
        # Workers of one replica share its port; anything else on it must fail to start.
        self.server = create_server(settings.security, reuse_port=settings.workers > 1)
        self.port = 0
        self._ready_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> AvailabilityServer:
        servicer.add_to_server(servicer.AvailabilityServicer(self.view), self.server)
        self.health.add_to(self.server)
        if self.settings.security.reflection:
            reflection.enable(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        # Read at scrape time (the last replica started in a process is the one exported).
        metrics.WATCHERS.set_function(lambda: len(self.view.hub))
        metrics.VIEW_EVENTS.set_function(lambda: len(self.view.views))
        metrics.FEED_LAG.set_function(self.consumer.lag_s)
        await self.health.start(serving=False)
        self.port = add_port(
            self.server, self.settings.host, self.settings.port, self.settings.security
        )
        await self.server.start()
        log.info("availability service listening on %s", self.address)
        await self.consumer.start()
        self._ready_task = asyncio.create_task(self._follow_feed_health(), name="feed-health")
        return self

    def feed_problem(self) -> str | None:
        """Why this replica is not live right now, in words for logs and clients; None if live."""
        lag = self.consumer.lag_s()
        if lag > self.settings.max_feed_lag_s:
            return (
                f"the availability service is {lag:.1f} s behind the feed "
                f"(more than {self.settings.max_feed_lag_s:g} s)"
            )
        if not self.consumer.connected:
            return "the availability service lost its connection to the feed (NATS)"
        return None

    async def _follow_feed_health(self, every_s: float = 0.25) -> None:
        """Readiness follows the feed at once; watchers are let go only once the view is staler
        than ``max_feed_lag_s``, so a broker restart of a second does not drop every stream."""
        await self.view.wait_ready()
        log.info("SERVING with %d events", len(self.view.views))
        await self.health.set_serving(True)
        not_serving_since = 0.0
        while True:
            problem = self.feed_problem()
            if problem is not None and await self.health.set_serving(False):
                not_serving_since = time.monotonic()
                log.warning("NOT_SERVING: %s", problem)
            elif problem is None and await self.health.set_serving(True):
                log.warning(
                    "SERVING again after %.1f s: the feed is live (lag %.1f s)",
                    time.monotonic() - not_serving_since,
                    self.consumer.lag_s(),
                )
            stale = self.consumer.lag_s() > self.settings.max_feed_lag_s
            if stale and self.view.paused is None and problem is not None:
                self.view.paused = f"{problem}; reconnect (to another replica) shortly"
                self.view.hub.close_all(self.view.paused)
                log.warning("watch streams ended and new ones refused until the feed is live")
            elif not stale and self.view.paused is not None:
                self.view.paused = None
            await asyncio.sleep(every_s)

    async def drain(self) -> None:
        """SIGTERM: NOT_SERVING first (for ``drain_delay_s``, still answering, while load
        balancers notice), then ``stop`` with ``shutdown_grace_s``."""
        await self.health.drain()
        if self.settings.drain_delay_s:
            log.info("NOT_SERVING; draining for %g s", self.settings.drain_delay_s)
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.stop(grace=self.settings.shutdown_grace_s)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop taking calls, end the watch streams (UNAVAILABLE: reconnect elsewhere), let unary
        calls finish within ``grace``."""
        await self.health.drain()
        if self._ready_task is not None:
            self._ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ready_task
        self.view.hub.close_all()
        await self.server.stop(grace)
        await self.consumer.stop()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve(settings: Settings, worker: str = "") -> None:
    server = await AvailabilityServer(settings).start()
    set_title("slotlock-availability", server.port, worker)

    async def freeze_when_ready() -> None:
        # The rebuilt view is long-lived: keep the collector from re-scanning it on every pass
        # (a process-wide choice, hence here and not in the server tests also run in-process).
        await server.view.wait_ready()
        gc.freeze()
        # A change written to N watch streams keeps N sends' objects alive at once (futures,
        # batch operations) until their completions: with the default threshold (700) that
        # burst set off young collections that promoted them, and the older generations were
        # then scanned over and over (4% of a worker's CPU at 1,000 watchers). They are freed
        # by reference counting; only a burst far larger than a sweep's starts a collection.
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])

    freezer = asyncio.create_task(freeze_when_ready())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: NOT_SERVING, then calls in flight finish")
    freezer.cancel()
    await server.drain()


def run_one(settings: Settings, worker: str = "") -> None:
    """One process of the replica (all of it with one worker) until SIGTERM or SIGINT."""
    logs.configure(settings.log_level, settings.telemetry.log_format)
    tracing.configure(settings.telemetry.otel_exporter, "slotlock-availability")
    try:
        metrics.serve(settings.host, settings.telemetry.metrics_port)
        asyncio.run(serve(settings, worker))
    except KeyboardInterrupt:
        pass
    except OSError as error:  # a port taken, most often: one line, not a traceback
        print(f"slotlock-availability: cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        tracing.shutdown()  # send the spans still buffered
