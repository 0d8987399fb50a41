"""`slotlock bench holds`: CreateHold throughput through gRPC on one hot event, next to the raw
Postgres limit of the same transaction shape (pgbench, no gRPC, one hold per transaction).

Prints both and their ratio; the last line is JSON:
{"holds_per_s": ..., "raw_pg_tps": ..., "ratio": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import subprocess
import tempfile
import time
from typing import Any

import grpc

from slotlock.feed import Feed
from slotlock.v1 import changes_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli.devstack import postgres_install_dir
from slotlock_cli.system import System

FEED = Feed(stream="BENCH_HOLDS", subject_prefix="bench.holds")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "holds", help="CreateHold throughput on one hot event vs the raw Postgres limit"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=128, help="calls in flight")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="reservation service processes sharing the port (SLOTLOCK_WORKERS; one per core)",
    )
    parser.add_argument(
        "--channels", type=int, default=8, help="client connections, spread over the workers"
    )
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument("--database-url", help="a real PostgreSQL server instead of embedded")
    parser.add_argument("--nats-url", help="a real NATS server instead of embedded")
    parser.set_defaults(handler=run)


# The transaction CreateHold runs for one hold (see reservation_service/sql/holds.sql), for pgbench.
PGBENCH_SCRIPT = """\
BEGIN;
SELECT *, clock_timestamp() AS db_now FROM events WHERE id = '{event_id}' FOR UPDATE;
SELECT * FROM reservations
  WHERE event_id = '{event_id}' AND status = 'PENDING' AND expires_at <= clock_timestamp()
  ORDER BY expires_at FOR UPDATE SKIP LOCKED;
INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,
                          idempotency_key, request_fingerprint, created_at, updated_at, expires_at)
  VALUES (gen_random_uuid(), '{event_id}', 1, 'DINNER', 'PENDING', 'bench', NULL, NULL,
          clock_timestamp(), clock_timestamp(), clock_timestamp() + interval '300 seconds');
UPDATE events SET pending = pending + 1, version = version + 1, updated_at = clock_timestamp()
  WHERE id = '{event_id}';
INSERT INTO outbox (event_id, payload) VALUES ('{event_id}', decode('{payload}', 'hex'));
SELECT pg_notify('slotlock_outbox', '');
COMMIT;
"""


# Benchmarks measure the services, not the network's security: plain text, and load clients
# (plain gRPC channels, in several processes) call without a token. The auth interceptor still
# runs on every call; the harness's own calls (seeding) still carry a verified token.
BENCH_ENV = {"SLOTLOCK_INSECURE_NO_AUTH": "true"}


def bench_system(
    args: argparse.Namespace,
    feed: Feed,
    *,
    extra_env: dict[str, str] | None = None,
    **options: Any,
) -> System:
    """The reservation service alone, the way it is deployed, on the servers ``--database-url``
    and ``--nats-url`` name (embedded ones otherwise), for the reservation benchmarks."""
    return System(
        database_url=args.database_url,
        nats_url=args.nats_url,
        feed=feed,
        database="bench",
        roles=("reservation",),
        log_level="WARNING",
        tls=False,
        extra_env={**BENCH_ENV, **(extra_env or {})},
        **options,
    )


def run(args: argparse.Namespace) -> int:
    env = {"SLOTLOCK_MAX_SEATS_PER_HOLD": "10", "SLOTLOCK_WORKERS": str(args.workers)}
    with bench_system(args, FEED, extra_env=env) as system:
        event_id = create_hot_event(system, "BENCH-HOT-GRPC")
        holds_per_s = measure_grpc(system.reservation_addr, event_id, args)
        print(
            f"gRPC CreateHold on one hot event: {holds_per_s:,.0f} holds/s "
            f"({args.workers} service worker(s), {args.concurrency} calls in flight over "
            f"{args.channels} connection(s) x {args.client_processes} client process(es), "
            f"{args.seconds:.0f} s)"
        )
        raw_event = create_hot_event(system, "BENCH-HOT-RAW")
        system.stop_service("reservation")  # pgbench gets the machine to itself
        raw_tps = measure_pgbench(system.database_url, raw_event, args)
        print(
            f"raw Postgres, same transaction, one hold per commit: {raw_tps:,.0f} tps "
            f"(pgbench, {args.pgbench_clients} clients)"
        )
        ratio = holds_per_s / raw_tps if raw_tps else 0.0
        print(f"ratio: {ratio:.2f} (group commit batches concurrent holds of one event)")
        print(
            json.dumps(
                {
                    "holds_per_s": round(holds_per_s, 1),
                    "raw_pg_tps": round(raw_tps, 1),
                    "ratio": round(ratio, 3),
                }
            )
        )
    return 0


def create_hot_event(system: System, code: str) -> str:
    """An event far in the future with room for every hold a run can make."""
    event = system.seed_event(
        code,
        capacity=1_000_000,
        title="Benchmark Night",
        local_date="2099-12-31",
        dinner_price=1,
    )
    return event.id


def measure_grpc(address: str, event_id: str, args: argparse.Namespace) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.client_processes) as pool:
        counts = pool.starmap(
            _client_process,
            [(address, event_id, args.concurrency, args.seconds, args.channels)]
            * args.client_processes,
        )
    total: int = sum(ok for ok, _ in counts)
    failed = sum(bad for _, bad in counts)
    if failed:
        print(f"warning: {failed} CreateHold calls failed during the run (not counted)")
    return total / float(args.seconds)


def _client_process(
    address: str, event_id: str, concurrency: int, seconds: float, channels: int
) -> tuple[int, int]:
    return asyncio.run(_drive(address, event_id, concurrency, seconds, channels))


async def _drive(
    address: str, event_id: str, concurrency: int, seconds: float, channels: int
) -> tuple[int, int]:
    ok = failed = 0
    # Separate connections (not one shared subchannel), so the kernel spreads them over workers.
    opened = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [reservation_pb2_grpc.ReservationServiceStub(channel) for channel in opened]
    request = reservation_pb2.CreateHoldRequest(event_id=event_id, quantity=1, customer_ref="bench")
    for stub in stubs:
        await stub.CreateHold(request)  # warm up each connection
    deadline = time.monotonic() + seconds

    async def worker(stub: reservation_pb2_grpc.ReservationServiceStub) -> None:
        nonlocal ok, failed
        while time.monotonic() < deadline:
            try:
                await stub.CreateHold(request, timeout=10)
                ok += 1
            except grpc.aio.AioRpcError:
                failed += 1

    await asyncio.gather(*(worker(stubs[n % channels]) for n in range(concurrency)))
    for channel in opened:
        await channel.close()
    return ok, failed


def measure_pgbench(database_url: str, event_id: str, args: argparse.Namespace) -> float:
    sample = changes_pb2.EventChange(type=changes_pb2.CHANGE_TYPE_HOLD_CREATED)
    sample.event.id = event_id
    sample.event.experience_title = "Benchmark Night"
    sample.reservation.id = event_id
    payload = sample.SerializeToString().hex()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT.format(event_id=event_id, payload=payload))
    result = subprocess.run(
        [
            str(postgres_install_dir() / "bin" / "pgbench"),
            "--no-vacuum",
            "--client",
            str(args.pgbench_clients),
            "--jobs",
            "2",
            "--time",
            str(max(1, round(args.seconds))),
            "--file",
            script.name,
            database_url,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr[-2000:]}")
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))
