"""What the reservation benchmarks share: Postgres and NATS (embedded unless URLs are given) and
the reservation service running as a process on them, the way it is deployed."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slotlock.feed import Feed
from slotlock_cli.dev import ensure_database
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.processes import ServiceProcess


@dataclass
class BenchReservation:
    stack: DevStack
    database_url: str
    address: str
    process: ServiceProcess


@contextlib.contextmanager
def reservation_service(
    args: argparse.Namespace, feed: Feed, env: dict[str, str]
) -> Iterator[BenchReservation]:
    """``args.database_url`` / ``args.nats_url`` pick real servers; ``env`` adds settings."""
    with (
        tempfile.TemporaryDirectory(prefix="slotlock-bench-") as tmp,
        DevStack(database_url=args.database_url, nats_url=args.nats_url, root=Path(tmp)) as stack,
    ):
        database_url = stack.database_url
        if stack.postgres is not None:
            database_url = ensure_database(stack.database_url, "bench")
        port = free_port()
        process = ServiceProcess(
            "reservation_service",
            {
                "SLOTLOCK_DATABASE_URL": database_url,
                "SLOTLOCK_NATS_URL": stack.nats_url,
                "SLOTLOCK_RESERVATION_PORT": str(port),
                "SLOTLOCK_LOG_LEVEL": "WARNING",
                "SLOTLOCK_STREAM": feed.stream,
                "SLOTLOCK_SUBJECT_PREFIX": feed.subject_prefix,
                **env,
            },
            name="reservation service",
        ).start()
        try:
            address = f"127.0.0.1:{port}"
            process.wait_serving(address)
            yield BenchReservation(stack, database_url, address, process)
        finally:
            process.stop()
