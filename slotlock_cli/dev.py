"""`slotlock dev`: the whole system on one machine, as a newcomer's first command.

Starts Postgres and NATS (embedded, unless URLs are given), then each service as its own process
exactly as it is deployed, seeds a few demo events into an empty catalog, prints the addresses
and runs until Ctrl-C, then stops everything cleanly.

Secured as production is: the services serve TLS with a certificate from a CA made at start, and
check a signed token on every call (a signing key made at start). It prints ready-to-use tokens
and the commands to call the services with them (`slotlock ...` and grpcurl).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg

from slotlock.client import ClientSecurity, open_sync_channel
from slotlock.identity import ADMIN, BOOKING, READER
from slotlock.v1 import reservation_pb2, reservation_pb2_grpc
from slotlock_cli import builders
from slotlock_cli.devstack import private_folder, write_private
from slotlock_cli.system import System


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
        "--data-dir",
        type=Path,
        help="keep embedded data, secrets and logs here, readable by you only (default: a "
        "temporary folder, removed at stop)",
    )
    parser.add_argument("--reservation-port", type=int, default=50051)
    parser.add_argument("--availability-port", type=int, default=50052)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--hold-ttl", type=float, default=300.0, help="seconds a hold lasts")
    parser.add_argument("--no-seed", action="store_true", help="do not create demo events")
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="serve plain text (tokens are still required)",
    )
    parser.set_defaults(handler=run)


DEFAULT_ADDRS = ("127.0.0.1:50051", "127.0.0.1:50052")
DEMO_EVENTS = (
    ("Saigon Dinner Show", 0, "19:00", 40, True),
    ("Saigon Dinner Show", 1, "19:00", 40, True),
    ("Mekong Cooking Experience", 2, "10:00", 12, True),
    ("Jazz on the Rooftop", 3, "20:30", 25, False),
)


def seed_demo_events(reservation_addr: str, security: ClientSecurity | None = None) -> int:
    """Create a few upcoming events if the catalog is empty; returns how many were created."""
    with open_sync_channel(reservation_addr, security) as channel:
        stub = reservation_pb2_grpc.ReservationServiceStub(channel)
        if stub.ListEvents(reservation_pb2.ListEventsRequest(page_size=1), timeout=5).events:
            return 0
        for title, days, start, capacity, experience_only in DEMO_EVENTS:
            day = date.today() + timedelta(days=days + 1)
            initials = "".join(word[0] for word in title.split()).upper()
            code = f"{initials}-{day:%Y-%m-%d}-{start.replace(':', '')}"
            request = builders.event_request(
                code,
                capacity,
                title=title,
                days_ahead=days + 1,
                start_time=start,
                experience_only_price=800_000,
                experience_only_enabled=experience_only,
            )
            stub.UpsertEvent(request, timeout=5)
        return len(DEMO_EVENTS)


def dev_system(args: argparse.Namespace) -> System:
    """The system `slotlock dev` runs: its data (embedded servers with generated passwords,
    logs, keys, the hold-token secret) in ``--data-dir`` or a temporary folder, either one
    readable by this user only (0700, secrets 0600). ``run`` removes a temporary one at stop."""
    root = private_folder(args.data_dir or Path(tempfile.mkdtemp(prefix="slotlock-dev-")))
    secret_file = root / "hold-token-secret"
    if not secret_file.exists():
        write_private(secret_file, secrets.token_hex(32))
    return System(
        database_url=args.database_url,
        nats_url=args.nats_url,
        root=root,
        database="slotlock",
        gateway=importlib.util.find_spec("gateway") is not None,
        ports={
            "reservation": args.reservation_port,
            "availability": args.availability_port,
            "gateway": args.gateway_port,
        },
        hold_ttl_s=args.hold_ttl,
        hold_token_secret=secret_file.read_text().strip(),
        log_level="INFO",
        tls=not args.no_tls,
        credentials=True,
    )


def write_tokens(system: System) -> dict[str, Path]:
    """A token per role in files only this user can read, for scripts:
    ``export SLOTLOCK_TOKEN=$(cat .../admin.token)``. The booking token also reads the catalog,
    as a checkout service or the gateway needs to (``slotlock hold`` looks events up by code)."""
    files = {}
    for role, roles in ((ADMIN, (ADMIN,)), (BOOKING, (BOOKING, READER)), (READER, (READER,))):
        path = system.security.folder / f"{role}.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(system.security.token(*roles, subject=f"slotlock-dev-{role}") + "\n")
        files[role] = path
    return files


def how_to_call(system: System, tokens: dict[str, Path]) -> list[str]:
    """The lines that tell a newcomer how to call the secured services."""
    admin = tokens[ADMIN].read_text().strip()
    ca = system.security.ca.cert_file if system.security.ca is not None else None
    tls_flag = f"-cacert {ca}" if ca is not None else "-plaintext"
    lines = [
        "Call it (tokens valid 12 hours; roles: admin, booking, reader):",
        f"  export SLOTLOCK_TOKEN={admin}",
    ]
    if ca is not None:
        lines.append(f"  export SLOTLOCK_TLS_CA_FILE={ca}")
    if (system.reservation_addr, system.availability_addr) != DEFAULT_ADDRS:
        lines.append(
            f"  export SLOTLOCK_RESERVATION_ADDR={system.reservation_addr} "
            f"SLOTLOCK_AVAILABILITY_ADDR={system.availability_addr}"
        )
    lines += [
        "  slotlock events",
        f'  grpcurl {tls_flag} -H "authorization: Bearer $SLOTLOCK_TOKEN" '
        f"{system.reservation_addr} slotlock.v1.ReservationService/ListEvents",
        f"  booking+reader token: {tokens[BOOKING]}; reader token: {tokens[READER]}",
    ]
    return lines


def run(args: argparse.Namespace) -> int:
    system = dev_system(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print("slotlock dev: starting Postgres, NATS and the services ...", flush=True)
        system.start()
        seeded = (
            0
            if args.no_seed
            else seed_demo_events(system.reservation_addr, system.client_security(ADMIN))
        )
        tokens = write_tokens(system)
    except (RuntimeError, TimeoutError, OSError, psycopg.Error, grpc.RpcError) as error:
        # The error ends with the failing service's log tail; the whole logs stay.
        print(
            f"slotlock dev: could not start (logs in {system.log_dir}): {error}",
            file=sys.stderr,
        )
        system.stop()
        return 1
    pg_kind = "embedded" if system.stack.postgres is not None else "given"
    nats_kind = "embedded" if system.stack.nats is not None else "given"
    wire = "gRPC over TLS" if system.tls else "gRPC, plain text"
    print(
        "\n".join(
            [
                "",
                "slotlock is running:",
                f"  listing page          {system.gateway_url}/" if system.with_gateway else "",
                f"  reservation service   {system.reservation_addr}  ({wire}, reflection on)",
                f"  availability service  {system.availability_addr}  ({wire}, reflection on)",
                f"  postgres ({pg_kind})  {system.database_url}",
                f"  nats ({nats_kind})      {system.stack.nats_url}",
                f"  logs                  {system.log_dir}",
                f"  demo events created   {seeded}" if seeded else "",
                f"  keys and certificates {system.security.folder}",
                "",
                *how_to_call(system, tokens),
                "",
                "Try: slotlock watch     (live availability in this terminal, with the exports)",
                "Press Ctrl-C to stop.",
            ]
        ).replace("\n\n\n", "\n\n"),
        flush=True,
    )
    failed = False
    try:
        while not stop.wait(0.5):
            for name, service in system.services.items():
                # Ctrl-C in a terminal reaches the services too: their exit is then no failure.
                if not service.process.running and not stop.is_set():
                    print(
                        f"slotlock dev: {service.process.name} exited with code "
                        f"{service.process.returncode}; stopping. Its log ends:\n"
                        f"{system.log_tail(name)}",
                        file=sys.stderr,
                    )
                    failed = True
                    stop.set()
                    break
    finally:
        print("\nslotlock dev: stopping ...", flush=True)
        system.stop()
        if args.data_dir is None:  # secrets and data go with it; a named folder is kept
            shutil.rmtree(system.root, ignore_errors=True)
    return 1 if failed else 0
