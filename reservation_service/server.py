"""Wires the reservation service together and serves it over gRPC (with health and reflection)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field

import grpc
import psycopg
from grpc_health.v1 import health
from psycopg_pool import AsyncConnectionPool

from reservation_service import convert
from reservation_service.application import Reservations
from reservation_service.db import Database, Pool
from reservation_service.expiry import Expirer
from reservation_service.gauges import refresh_gauges
from reservation_service.health import DatabaseProbe
from reservation_service.holds import HoldTokens
from reservation_service.migrations import (
    SchemaNotCurrent,
    apply_migrations,
    check_schema_current,
)
from reservation_service.outbox import OutboxRelay
from reservation_service.servicer import ReservationServicer
from reservation_service.settings import Settings
from reservation_service.store import ReservationStore
from slotlock import deadlines, logs, metrics, reflection, tracing, workers
from slotlock.grpc_server import add_port, create_server
from slotlock.health import Health
from slotlock.process_title import set_title
from slotlock.settings import SettingsError
from slotlock.v1 import reservation_pb2, reservation_pb2_grpc

log = logging.getLogger(__name__)

# Every pooled session: a row lock held by a client that vanished (a dead node, a partition with
# no RST) must not stall every replica's batches for as long as the OS takes to notice. A lock
# wait ends after 5 s (LockNotAvailable: retried, then UNAVAILABLE), Postgres ends a session idle
# in a transaction after 30 s, and its TCP keepalives find a dead peer within about 25 s.
SESSION_OPTIONS = (
    "-c lock_timeout=5s -c idle_in_transaction_session_timeout=30s"
    " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)

SERVICE = reservation_pb2.DESCRIPTOR.services_by_name["ReservationService"]
SERVICE_NAME = SERVICE.full_name
# psycopg_pool doubles its reconnect delay up to this long, then gives the attempt up and starts a
# fresh one (1 s delay) on the next demand for a connection; its default (300 s) let the delay
# grow so far that service resumed 12 s after an outage ended. The health probe is the demand.
RECONNECT_GIVE_UP_S = 2.0


@dataclass
class ReservationServer:
    settings: Settings
    port: int = 0
    server: grpc.aio.Server | None = None
    pool: Pool | None = None
    store: ReservationStore | None = None
    relay: OutboxRelay | None = None
    expirer: Expirer | None = None
    reservations: Reservations | None = None
    health: Health = field(default_factory=lambda: Health(SERVICE_NAME))
    probe: DatabaseProbe | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> ReservationServer:
        s = self.settings
        if not s.hold_token_secret:  # no default secret: fail closed (from_env checks more)
            raise SettingsError("SLOTLOCK_HOLD_TOKEN_SECRET is not set: hold tokens need a secret")
        if s.migrate_on_start:
            await apply_migrations(s.database_url)
        else:  # no DDL rights: `slotlock migrate` must have run
            await check_schema_current(s.database_url)
        self.pool = pool = AsyncConnectionPool(
            s.database_url,
            min_size=2,
            max_size=s.db_pool_size,
            open=False,
            timeout=s.db_unavailable_after_s,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={"options": SESSION_OPTIONS},
        )
        await pool.open(wait=True, timeout=30)
        database = Database(pool, unavailable_after_s=s.db_unavailable_after_s)
        self.relay = OutboxRelay(pool, s.database_url, s.nats_url, s.feed, retention=s.retention)
        self.store = ReservationStore(
            database,
            convert.change_payload,  # the store writes payloads; it does not know their format
            on_commit=self.relay.wake,
            notify_other_replicas=s.notify_other_replicas,
        )
        self.expirer = Expirer(self.store, recheck_s=s.expiry_recheck_s)
        self.reservations = Reservations(
            self.store,
            self.expirer,
            s.hold_policy,
            HoldTokens(
                s.hold_token_secret.encode(),
                tuple(secret.encode() for secret in s.previous_hold_token_secrets),
            ),
            max_batch=s.max_batch,
        )

        # Workers of one replica share its port; anything else on it must fail to start.
        self.server = create_server(s.security, reuse_port=s.workers > 1)
        reservation_pb2_grpc.add_ReservationServiceServicer_to_server(
            deadlines.following_deadlines(ReservationServicer(self.reservations), SERVICE),
            self.server,
        )
        self.health.add_to(self.server)
        if s.security.reflection:
            reflection.enable(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        self.port = add_port(self.server, s.host, s.port, s.security)
        await self.server.start()
        if s.run_relay:
            self.tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        if s.run_expirer:
            self.tasks.append(asyncio.create_task(self.expirer.run(), name="expirer"))
        self.probe = DatabaseProbe(database, self.health.set_serving, probe_s=s.health_probe_s)
        self.tasks.append(asyncio.create_task(self.probe.run(), name="database-probe"))
        self.tasks.append(asyncio.create_task(refresh_gauges(pool), name="gauges"))
        await self.health.start(serving=True)
        log.info("reservation service listening on %s:%d", s.host, self.port)
        return self

    async def drain(self) -> None:
        """SIGTERM: NOT_SERVING first (for ``drain_delay_s``, still answering, while load
        balancers notice), then no new calls, calls in flight finish within ``shutdown_grace_s``,
        and the background work stops."""
        s = self.settings
        await self.health.drain()
        if s.drain_delay_s:
            log.info("NOT_SERVING; draining for %g s before refusing new calls", s.drain_delay_s)
            await asyncio.sleep(s.drain_delay_s)
        await self.stop(grace=s.shutdown_grace_s)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.drain()
        if self.server is not None:
            await self.server.stop(grace)
        if self.reservations is not None:
            await self.reservations.close()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=5)
            for task in stuck:
                log.warning("background task %s did not stop within 5 s", task.get_name())
        if self.pool is not None:
            await self.pool.close(timeout=5)


async def serve(settings: Settings, worker: str = "") -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly."""
    server = await ReservationServer(settings).start()
    set_title("slotlock-reservation", server.port, worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("reservation service stopping")
    await server.drain()
    log.info("reservation service stopped")


def run_one(settings: Settings, worker: str = "") -> None:
    telemetry = settings.telemetry
    logs.configure(settings.log_level, telemetry.log_format)
    tracing.configure(telemetry.otel_exporter, "slotlock-reservation")
    try:
        metrics.serve(settings.host, telemetry.metrics_port)
        asyncio.run(serve(settings, worker))
    except KeyboardInterrupt:
        pass
    except (OSError, psycopg.OperationalError, SchemaNotCurrent) as error:
        print(f"slotlock-reservation: cannot start: {error}".strip(), file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        tracing.shutdown()  # send the spans still buffered


def run_workers(settings: Settings) -> int:
    """``SLOTLOCK_WORKERS`` processes sharing the port (``slotlock.workers``, shared with the
    availability service); the exit code says whether every worker ended cleanly."""
    return workers.run_workers("slotlock-reservation", settings, run_one)
