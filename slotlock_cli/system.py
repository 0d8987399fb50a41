"""The one way to start slotlock: Postgres and NATS (a :class:`DevStack`), a database on it, and the
services as processes, each with its port, its environment and its log file, started and waited
for until ready. `slotlock dev`, every benchmark and the end-to-end tests use it, so how a service
is configured and when it counts as ready is written down once.

    with System(stack, feed, log_dir=tmp_path, hold_ttl_s=3, gateway=True) as system:
        event = system.seed_event("DS-1", capacity=10)
        system.restart_service("availability")

A System either runs on a stack it is given (tests share one per session) or starts its own
(embedded servers unless URLs are given) and stops it again. Services can be stopped, started
and restarted one at a time on the same port, the way an operator restarts them, and more
replicas of a role can be added (``add_service("availability")``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from psycopg import sql as pgsql

from slotlock.client import ClientSecurity, open_sync_channel
from slotlock.feed import Feed
from slotlock.identity import ADMIN, BOOKING, READER
from slotlock.v1 import catalog_pb2, reservation_pb2_grpc
from slotlock_cli import builders
from slotlock_cli.certs import DevSecurity
from slotlock_cli.devstack import DevStack, free_port, private_folder
from slotlock_cli.processes import ServiceProcess

Role = Literal["reservation", "availability", "gateway"]
MODULES: dict[Role, str] = {
    "reservation": "reservation_service",
    "availability": "availability_service",
    "gateway": "gateway",
}
LABELS: dict[Role, str] = {
    "reservation": "reservation service",
    "availability": "availability service",
    "gateway": "gateway",
}
HOST = "127.0.0.1"


# -- databases ---------------------------------------------------------------------------------


def database_url_for(server_url: str, name: str) -> str:
    """``server_url`` pointed at database ``name`` (user, host and query kept)."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def create_database(
    server_url: str, name: str, *, template: str | None = None, if_missing: bool = False
) -> str:
    """Create database ``name`` on the server of ``server_url`` (from ``template`` if given) and
    return its URL. Names are quoted as identifiers by psycopg, never pasted into the SQL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        if (
            if_missing
            and conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        ):
            return database_url_for(server_url, name)
        statement = pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name))
        if template is not None:
            statement = pgsql.SQL("{} TEMPLATE {}").format(statement, pgsql.Identifier(template))
        conn.execute(statement)
    return database_url_for(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` even if connections are still open (a test that failed may have
    left some behind)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )


async def _ensure_stream(nats_url: str, feed: Feed | None) -> None:
    import nats

    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        await (feed or Feed()).ensure_stream(nc.jetstream(timeout=5))
    finally:
        await nc.close()


# -- the system --------------------------------------------------------------------------------


@dataclass
class Service:
    """One service process of the system and where it listens."""

    role: Role
    port: int
    process: ServiceProcess
    env: dict[str, str] = field(default_factory=dict)  # on top of the role's environment

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


class System:
    """Postgres, NATS and slotlock's services as processes.

    ``stack``: run on these servers (not stopped here); without one, a stack of our own is
    started from ``database_url`` / ``nats_url`` (embedded servers where they are None;
    ``postgres=False`` for NATS alone).

    ``database``: None gives the services a fresh database on the stack's server, dropped at
    stop. A name (``slotlock dev`` uses "slotlock") is created on an embedded server if missing
    and kept; a ``database_url`` that was given is then used as it is.

    ``roles``: the services :meth:`start` starts (``gateway=True`` adds the gateway).
    ``ports``: fixed ports by role; the others get a free one.

    Security as in production: the services check a signed token on every call (keys made at
    start, ``self.security``) and, with ``tls`` (the default), serve TLS with a certificate
    from a throwaway CA. The gateway gets its own booking + reader token; ``client_env`` and
    ``channel`` carry an admin token. A stack of its own runs with ``credentials`` (generated
    passwords; each service its own NATS user, the availability service a read-only one), and
    the reservation service gets a random hold-token secret unless ``hold_token_secret`` is
    given. Its folder is readable by its user only.
    """

    def __init__(
        self,
        stack: DevStack | None = None,
        feed: Feed | None = None,
        *,
        database_url: str | None = None,
        nats_url: str | None = None,
        postgres: bool = True,
        root: Path | None = None,
        log_dir: Path | None = None,
        database: str | None = None,
        roles: Iterable[Role] = ("reservation", "availability"),
        gateway: bool = False,
        ports: Mapping[Role, int] | None = None,
        hold_ttl_s: float = 300.0,
        hold_token_secret: str | None = None,
        log_level: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        tls: bool = True,
        credentials: bool = True,
    ) -> None:
        # A folder of our own only when there is something to keep in it (servers, logs).
        self._own_root = root is None and (stack is None or log_dir is None)
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="slotlock-system-")) if self._own_root else log_dir
        assert root is not None
        self.root = private_folder(root)
        self.log_dir = log_dir or self.root / "logs"
        self._own_stack = stack is None
        self.stack = stack or DevStack(
            database_url=database_url,
            nats_url=nats_url,
            root=self.root,
            postgres=postgres,
            credentials=credentials,
        )
        self.feed = feed
        self.database = database
        self.hold_ttl_s = hold_ttl_s
        # Never a default one: the service refuses to start without a secret of 32+ bytes.
        self.hold_token_secret = hold_token_secret or secrets.token_hex(32)
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        self.tls = tls
        self._security: DevSecurity | None = None
        self.ports: dict[Role, int] = dict(ports or {})
        self.database_url = ""
        self._fresh_database = ""  # dropped at stop
        self._stack_started = False
        self._channels: list[grpc.Channel] = []
        self.services: dict[str, Service] = {}
        for role in (*roles, *(("gateway",) if gateway else ())):
            self.add_service(role, port=self.ports.get(role, 0))

    # -- addresses --

    def service(self, name: str) -> Service:
        return self.services[name]

    def first(self, role: Role) -> Service:
        """The first service of ``role`` (the one clients are pointed at)."""
        for service in self.services.values():
            if service.role == role:
                return service
        raise KeyError(f"no {role} service in this system")

    @property
    def reservation_addr(self) -> str:
        return self.first("reservation").address

    @property
    def availability_addr(self) -> str:
        return self.first("availability").address

    @property
    def gateway_url(self) -> str:
        return f"http://{self.first('gateway').address}"

    @property
    def with_gateway(self) -> bool:
        return any(service.role == "gateway" for service in self.services.values())

    @property
    def processes(self) -> list[ServiceProcess]:
        return [service.process for service in self.services.values()]

    @property
    def security(self) -> DevSecurity:
        """Keys and certificates of this system, made on first use (in ``root``)."""
        if self._security is None:
            self._security = DevSecurity(self.root / "security", tls=self.tls)
        return self._security

    def client_security(self, *roles: str, subject: str = "slotlock-dev") -> ClientSecurity:
        """A token with ``roles`` (admin when none are given) and the CA, for a client."""
        return self.security.client_security(*roles, subject=subject)

    def client_env(self, *roles: str, subject: str = "slotlock-dev") -> dict[str, str]:
        """What a client (gateway, CLI) needs to find and call the services: their addresses, a
        token with ``roles`` (admin when none are given) and the CA."""
        return {
            "SLOTLOCK_RESERVATION_ADDR": self.reservation_addr,
            "SLOTLOCK_AVAILABILITY_ADDR": self.availability_addr,
            **self.security.client_env(*roles, subject=subject),
        }

    # -- environment per role --

    def env_for(self, role: Role, port: int) -> dict[str, str]:
        """The variables a service of ``role`` reads, and no others (a service may report
        ``SLOTLOCK_*`` variables it does not know)."""
        env = {"PYTHONFAULTHANDLER": "1"}  # a crash in C code leaves its Python stack in the log
        env["SLOTLOCK_LOG_FORMAT"] = "console"  # read by a person (deployments default to JSON)
        if self.log_level is not None:
            env["SLOTLOCK_LOG_LEVEL"] = self.log_level
        if role in ("reservation", "availability"):
            env.update(self.security.server_env())
            env["SLOTLOCK_NATS_URL"] = self.stack.nats_url_for(role)
            if self.feed is not None:
                env["SLOTLOCK_STREAM"] = self.feed.stream
                env["SLOTLOCK_SUBJECT_PREFIX"] = self.feed.subject_prefix
        if role == "reservation":
            env["SLOTLOCK_DATABASE_URL"] = self.database_url
            env["SLOTLOCK_RESERVATION_PORT"] = str(port)
            env["SLOTLOCK_HOLD_TTL_S"] = str(self.hold_ttl_s)
            env["SLOTLOCK_HOLD_TOKEN_SECRET"] = self.hold_token_secret
        elif role == "availability":
            env["SLOTLOCK_AVAILABILITY_PORT"] = str(port)
        else:
            env["SLOTLOCK_GATEWAY_HOST"] = HOST
            env["SLOTLOCK_GATEWAY_PORT"] = str(port)
            env.update(self.client_env(BOOKING, READER, subject="gateway"))
            # A demo on one machine: the simulated Pay on, plain HTTP (no Secure cookies).
            env["SLOTLOCK_GATEWAY_DEMO_PAYMENTS"] = "true"
            env["SLOTLOCK_GATEWAY_SECURE_COOKIES"] = "false"
        return {**env, **self.extra_env}

    # -- lifecycle --

    def add_service(
        self, role: Role, *, port: int = 0, env: Mapping[str, str] | None = None
    ) -> str:
        """Declare a service (another replica, if ``role`` is taken); returns its name: the role,
        then ``<role>-2``, ``<role>-3``, ... ``env`` is added to the role's environment."""
        name: str = role
        number = 1
        while name in self.services:
            number += 1
            name = f"{role}-{number}"
        label = LABELS[role] if number == 1 else f"{LABELS[role]} {number}"
        process = ServiceProcess(
            MODULES[role], {}, name=label, log_path=self.log_dir / f"{name}.log"
        )
        self.services[name] = Service(role, port or free_port(), process, dict(env or {}))
        return name

    def start(self) -> System:
        """Start the stack (if ours), the database and every declared service."""
        try:
            self.start_stack()
            self.start_services(list(self.services))
        except BaseException:
            self.stop()
            raise
        return self

    def start_stack(self) -> None:
        """Start our stack (if we own it) and provide the services' database. Idempotent."""
        if self._stack_started:
            return
        self._stack_started = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._own_stack:
            self.stack.start()
            if self.stack.nats is not None and self.stack.nats.passwords:
                # The availability service may not create the stream (a reader): make it now,
                # as the relay would, so neither has to wait for the other.
                # (In a thread of its own: a test may start a System inside its event loop.)
                url = self.stack.nats_url_for("reservation")
                with concurrent.futures.ThreadPoolExecutor(1) as thread:
                    thread.submit(asyncio.run, _ensure_stream(url, self.feed)).result(30)
        server_url = self.stack.database_url
        if not server_url:
            return  # NATS alone
        if self.database is None:
            self._fresh_database = f"slotlock_{uuid.uuid4().hex[:12]}"
            self.database_url = create_database(server_url, self._fresh_database)
        elif self.stack.postgres is not None:
            self.database_url = create_database(server_url, self.database, if_missing=True)
        else:
            self.database_url = server_url

    def start_services(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Start several services and wait until all are ready: the back-end services side by
        side, then the gateway (its readiness does not need them, but its first page does)."""
        names = list(names)
        backends = [name for name in names if self.services[name].role != "gateway"]
        gateways = [name for name in names if self.services[name].role == "gateway"]
        for group in (backends, gateways):
            for name in group:
                self._spawn(name)
            for name in group:
                self.start_service(name, timeout)

    def start_service(self, name: str, timeout: float = 30.0) -> None:
        """Start (or start again) one service on its port and wait until it is ready; a service
        that fails to come up raises RuntimeError with the end of its log."""
        self.start_stack()
        self._spawn(name)
        service = self.services[name]
        try:
            if service.role == "gateway":
                # Up, not yet live: /healthz answers 503 until its feed is live (README).
                service.process.wait_http_ok(f"http://{service.address}/livez", timeout)
            else:
                service.process.wait_serving(
                    service.address, timeout, ClientSecurity(tls=self.security.client_tls())
                )
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; log:\n{self.log_tail(name)}") from None

    def _spawn(self, name: str) -> None:
        service = self.services[name]
        if service.process.running:
            return
        service.process.env = {**self.env_for(service.role, service.port), **service.env}
        service.process.start()

    def stop_service(self, name: str) -> None:
        self.services[name].process.stop()

    def restart_service(self, name: str, timeout: float = 30.0) -> None:
        self.stop_service(name)
        self.start_service(name, timeout)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.services[name].process.log_tail(lines)

    def stop(self) -> None:
        """Stop every service, drop a fresh database, stop our stack, remove our files.
        Safe to call twice, and after a failed start."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        for service in reversed(self.services.values()):
            service.process.stop()
        if self._fresh_database:
            # The server may be gone already (a failed start); nothing left to tidy then.
            with contextlib.suppress(psycopg.Error):
                drop_database(self.stack.database_url, self._fresh_database)
            self._fresh_database = ""
        if self._own_stack and self._stack_started:
            self.stack.stop()
        self._stack_started = False
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it --

    def channel(self, name: str) -> grpc.Channel:
        """A new channel to service ``name``, closed at stop. New each time on purpose: a channel
        to a service that was restarted may sit in reconnect backoff for a while."""
        channel = open_sync_channel(self.services[name].address, self.client_security(ADMIN))
        self._channels.append(channel)
        return channel

    def seed_event(
        self,
        code: str,
        *,
        capacity: int = 10,
        experience_only_price: int | None = None,
        **fields: Any,
    ) -> catalog_pb2.Event:
        """Create (or update) an upcoming event through the reservation service; ``fields`` as
        :func:`builders.event_request` takes them. An experience-only price enables it."""
        request = builders.event_request(
            code,
            capacity,
            experience_only_price=experience_only_price,
            **fields,
        )
        if experience_only_price is not None:
            request.experience_only_enabled = True
        with open_sync_channel(self.reservation_addr, self.client_security(ADMIN)) as channel:
            stub = reservation_pb2_grpc.ReservationServiceStub(channel)
            event: catalog_pb2.Event = stub.UpsertEvent(request, timeout=10)
            return event
