"""`slotlock dev`: the whole system on one machine, as a newcomer's first command.

Starts Postgres and NATS (embedded, unless URLs are given), then each service as its own process
exactly as it is deployed, seeds a few demo events into an empty catalog, prints the addresses
and runs until Ctrl-C, then stops everything cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql as pgsql

from slotlock.v1 import catalog_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.processes import ServiceProcess


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dev",
        help="run the whole system locally (embedded Postgres and NATS by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SLOTLOCK_DATABASE_URL"),
        help="use this PostgreSQL database instead of an embedded one",
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("SLOTLOCK_NATS_URL"),
        help="use this NATS server (with JetStream) instead of an embedded one",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep embedded data here (default: temporary)"
    )
    parser.add_argument("--reservation-port", type=int, default=50051)
    parser.add_argument("--availability-port", type=int, default=50052)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--hold-ttl", type=float, default=300.0, help="seconds a hold lasts")
    parser.add_argument("--no-seed", action="store_true", help="do not create demo events")
    parser.set_defaults(handler=run)


class DevSystem:
    """Everything `slotlock dev` runs, startable from code too (the end-to-end tests use it)."""

    def __init__(
        self,
        *,
        database_url: str | None = None,
        nats_url: str | None = None,
        data_dir: Path | None = None,
        reservation_port: int = 0,
        availability_port: int = 0,
        gateway_port: int = 0,
        hold_ttl_s: float = 300.0,
        with_gateway: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = data_dir or Path(tempfile.mkdtemp(prefix="slotlock-dev-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.stack = DevStack(database_url=database_url, nats_url=nats_url, root=self.root)
        self.reservation_port = reservation_port or free_port()
        self.availability_port = availability_port or free_port()
        self.gateway_port = gateway_port or free_port()
        self.hold_ttl_s = hold_ttl_s
        self.with_gateway = with_gateway and importlib.util.find_spec("gateway") is not None
        self.extra_env = extra_env or {}
        self.processes: list[ServiceProcess] = []
        self.database_url = ""

    @property
    def reservation_addr(self) -> str:
        return f"127.0.0.1:{self.reservation_port}"

    @property
    def availability_addr(self) -> str:
        return f"127.0.0.1:{self.availability_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/"

    def start(self) -> DevSystem:
        self.stack.start()
        self.database_url = self.stack.database_url
        if self.stack.postgres is not None:  # embedded: use a database of our own
            self.database_url = ensure_database(self.stack.database_url, "slotlock")
        secret_file = self.root / "hold-token-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(32))
        common = {
            "SLOTLOCK_NATS_URL": self.stack.nats_url,
            "SLOTLOCK_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        reservation = ServiceProcess(
            "reservation_service",
            {
                **common,
                "SLOTLOCK_DATABASE_URL": self.database_url,
                "SLOTLOCK_RESERVATION_PORT": str(self.reservation_port),
                "SLOTLOCK_HOLD_TTL_S": str(self.hold_ttl_s),
                "SLOTLOCK_HOLD_TOKEN_SECRET": secret_file.read_text(),
            },
            name="reservation service",
            log_path=logs / "reservation.log",
        )
        availability = ServiceProcess(
            "availability_service",
            {**common, "SLOTLOCK_AVAILABILITY_PORT": str(self.availability_port)},
            name="availability service",
            log_path=logs / "availability.log",
        )
        self.processes += [reservation.start(), availability.start()]
        reservation.wait_serving(self.reservation_addr)
        availability.wait_serving(self.availability_addr)
        if self.with_gateway:
            gateway = ServiceProcess(
                "gateway",
                {
                    **common,
                    "SLOTLOCK_GATEWAY_PORT": str(self.gateway_port),
                    "SLOTLOCK_RESERVATION_ADDR": self.reservation_addr,
                    "SLOTLOCK_AVAILABILITY_ADDR": self.availability_addr,
                },
                name="gateway",
                log_path=logs / "gateway.log",
            )
            self.processes.append(gateway.start())
            wait_http(self.gateway_url + "healthz", gateway)
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        self.stack.stop()


def ensure_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    head, _, _ = server_url.rpartition("/")
    return f"{head}/{name}"


def wait_http(url: str, process: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"{process.name} exited with code {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            if reply.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{process.name} did not answer {url} within {timeout:.0f}s")


DEMO_EVENTS = (
    ("Saigon Dinner Show", 0, "19:00", 40, True),
    ("Saigon Dinner Show", 1, "19:00", 40, True),
    ("Mekong Cooking Experience", 2, "10:00", 12, True),
    ("Jazz on the Rooftop", 3, "20:30", 25, False),
)


def seed_demo_events(reservation_addr: str) -> int:
    """Create a few upcoming events if the catalog is empty; returns how many were created."""
    with grpc.insecure_channel(reservation_addr) as channel:
        stub = reservation_pb2_grpc.ReservationServiceStub(channel)
        if stub.ListEvents(reservation_pb2.ListEventsRequest(page_size=1), timeout=5).events:
            return 0
        for title, days, start, capacity, experience_only in DEMO_EVENTS:
            day = date.today() + timedelta(days=days + 1)
            initials = "".join(word[0] for word in title.split()).upper()
            code = f"{initials}-{day:%Y-%m-%d}-{start.replace(':', '')}"
            stub.UpsertEvent(
                reservation_pb2.UpsertEventRequest(
                    code=code,
                    experience_title=title,
                    local_date=day.isoformat(),
                    local_start_time=start,
                    capacity=capacity,
                    experience_only_enabled=experience_only,
                    dinner_price=catalog_pb2.Money(amount=1_500_000, currency="VND"),
                    experience_only_price=catalog_pb2.Money(amount=800_000, currency="VND"),
                ),
                timeout=5,
            )
        return len(DEMO_EVENTS)


def run(args: argparse.Namespace) -> int:
    system = DevSystem(
        database_url=args.database_url,
        nats_url=args.nats_url,
        data_dir=args.data_dir,
        reservation_port=args.reservation_port,
        availability_port=args.availability_port,
        gateway_port=args.gateway_port,
        hold_ttl_s=args.hold_ttl,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print("slotlock dev: starting Postgres, NATS and the services ...", flush=True)
        system.start()
        seeded = 0 if args.no_seed else seed_demo_events(system.reservation_addr)
    except (RuntimeError, TimeoutError, OSError, psycopg.Error, grpc.RpcError) as error:
        print(
            f"slotlock dev: could not start: {error} (logs in {system.root / 'logs'})",
            file=sys.stderr,
        )
        system.stop()
        return 1
    pg_kind = "embedded" if system.stack.postgres is not None else "given"
    nats_kind = "embedded" if system.stack.nats is not None else "given"
    print(
        "\n".join(
            [
                "",
                "slotlock is running:",
                f"  listing page          {system.gateway_url}" if system.with_gateway else "",
                f"  reservation service   {system.reservation_addr}  (gRPC, reflection on)",
                f"  availability service  {system.availability_addr}  (gRPC, reflection on)",
                f"  postgres ({pg_kind})  {system.database_url}",
                f"  nats ({nats_kind})      {system.stack.nats_url}",
                f"  logs                  {system.root / 'logs'}",
                f"  demo events created   {seeded}" if seeded else "",
                "",
                "Try: slotlock watch     (live availability in this terminal)",
                "Press Ctrl-C to stop.",
            ]
        ).replace("\n\n\n", "\n\n"),
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            for process in system.processes:
                if not process.running:
                    print(f"slotlock dev: {process.name} exited; stopping", file=sys.stderr)
                    stop.set()
    finally:
        print("\nslotlock dev: stopping ...", flush=True)
        system.stop()
    return 0
