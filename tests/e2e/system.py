"""The whole slotlock system as real processes, for end-to-end tests (and anything else that wants
it): a fresh database on the session's Postgres, the reservation and availability services, and
optionally the web gateway, each with its own port and log file. Services can be stopped and
started again on the same port, the way an operator restarts them.

    with System(stack, feed, log_dir=tmp_path, hold_ttl_s=3, gateway=True) as system:
        event = system.seed_event("DS-1", capacity=10)
        httpx.get(system.gateway_url + "/api/events")
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import psycopg

from slotlock.feed import Feed
from slotlock.v1 import catalog_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.processes import ServiceProcess

SERVICES = ("reservation", "availability", "gateway")


def fresh_database(server_url: str, prefix: str = "e2e") -> str:
    """Create an empty database on the server of ``server_url`` and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def drop_database(server_url: str, database_url: str) -> None:
    """Tidy up after :func:`fresh_database` (matters when the tests use a shared server)."""
    name = urlsplit(database_url).path.lstrip("/")
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(server_url, autocommit=True) as conn,
    ):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_http_ok(url: str, timeout: float = 20.0, process: ServiceProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running:
            raise RuntimeError(f"{process.name} exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


class System:
    """Services of one test as processes on the session's Postgres and NATS."""

    def __init__(
        self,
        stack: DevStack,
        feed: Feed,
        *,
        log_dir: Path,
        hold_ttl_s: float = 300.0,
        gateway: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.feed = feed
        self.log_dir = log_dir
        self.hold_ttl_s = hold_ttl_s
        self.with_gateway = gateway
        self.extra_env = extra_env or {}
        self.reservation_port = free_port()
        self.availability_port = free_port()
        self.gateway_port = free_port()
        self.database_url = ""
        self.processes: dict[str, ServiceProcess] = {}

    @property
    def reservation_addr(self) -> str:
        return f"127.0.0.1:{self.reservation_port}"

    @property
    def availability_addr(self) -> str:
        return f"127.0.0.1:{self.availability_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def client_env(self) -> dict[str, str]:
        """What a client (gateway, CLI) needs to find the services."""
        return {
            "SLOTLOCK_RESERVATION_ADDR": self.reservation_addr,
            "SLOTLOCK_AVAILABILITY_ADDR": self.availability_addr,
        }

    def start(self) -> System:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = fresh_database(self.stack.database_url)
        feed_env = {
            "SLOTLOCK_NATS_URL": self.stack.nats_url,
            "SLOTLOCK_STREAM": self.feed.stream,
            "SLOTLOCK_SUBJECT_PREFIX": self.feed.subject_prefix,
        }
        self.processes["reservation"] = self._process(
            "reservation_service",
            {
                **feed_env,
                "SLOTLOCK_DATABASE_URL": self.database_url,
                "SLOTLOCK_RESERVATION_PORT": str(self.reservation_port),
                "SLOTLOCK_HOLD_TTL_S": str(self.hold_ttl_s),
            },
        )
        self.processes["availability"] = self._process(
            "availability_service",
            {**feed_env, "SLOTLOCK_AVAILABILITY_PORT": str(self.availability_port)},
        )
        if self.with_gateway:
            self.processes["gateway"] = self._process(
                "gateway",
                {
                    **self.client_env(),
                    "SLOTLOCK_GATEWAY_HOST": "127.0.0.1",
                    "SLOTLOCK_GATEWAY_PORT": str(self.gateway_port),
                },
            )
        try:
            for name in self.processes:
                self.start_service(name)
        except BaseException:
            self.stop()
            raise
        return self

    def start_service(self, name: str, timeout: float = 30.0) -> None:
        """Start (or start again) one service on its port and wait until it is ready."""
        process = self.processes[name]
        if not process.running:
            process.start()
        try:
            self._wait_ready(name, process, timeout)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log:\n{self.log_tail(name)}") from None

    def _wait_ready(self, name: str, process: ServiceProcess, timeout: float) -> None:
        if name == "gateway":
            wait_http_ok(f"{self.gateway_url}/healthz", timeout, process)
        else:
            address = self.reservation_addr if name == "reservation" else self.availability_addr
            process.wait_serving(address, timeout)

    def stop_service(self, name: str) -> None:
        self.processes[name].stop()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        if self.database_url:
            drop_database(self.stack.database_url, self.database_url)
            self.database_url = ""

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def seed_event(
        self,
        code: str,
        *,
        capacity: int = 10,
        title: str = "Dinner Show",
        days_ahead: int = 30,
        start_time: str = "19:00",
        dinner_price: int = 1_500_000,
        experience_only_price: int | None = None,
    ) -> catalog_pb2.Event:
        """Create (or update) an upcoming event through the reservation service."""
        request = reservation_pb2.UpsertEventRequest(
            code=code,
            experience_title=title,
            local_date=(date.today() + timedelta(days=days_ahead)).isoformat(),
            local_start_time=start_time,
            capacity=capacity,
            dinner_price=catalog_pb2.Money(amount=dinner_price, currency="VND"),
        )
        if experience_only_price is not None:
            request.experience_only_enabled = True
            request.experience_only_price.CopyFrom(
                catalog_pb2.Money(amount=experience_only_price, currency="VND")
            )
        with grpc.insecure_channel(self.reservation_addr) as channel:
            stub = reservation_pb2_grpc.ReservationServiceStub(channel)
            event: catalog_pb2.Event = stub.UpsertEvent(request, timeout=10)
            return event

    def _process(self, module: str, env: dict[str, str]) -> ServiceProcess:
        name = module.removesuffix("_service")
        return ServiceProcess(
            module,
            # A crash in C code (gRPC, psycopg) leaves its Python stack in the log.
            {**env, "PYTHONFAULTHANDLER": "1", **self.extra_env},
            name=name,
            log_path=self.log_dir / f"{name}.log",
        )

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
