"""`slotlock bench holds`: CreateHold throughput through gRPC on one hot event (or spread over
``--events N``), next to the raw Postgres limits of the same statements (pgbench, no gRPC): one
hold per transaction, and the batched limit (``--batched-holds`` per transaction, the shape group
commit reaches); and a bare grpc.aio server answering the same messages with no work behind
them (the gRPC ceiling). ``--op confirm|release`` measures ConfirmHold / ReleaseHold instead, on
holds made beforehand (straight into the database, their tokens minted with the service's secret).

Rates divide by the measured time of the run, not the nominal one. Any failed call makes the
command fail (exit code 1) after printing: a rate with failures in it is not a rate.

The last line is JSON: {"op": ..., "events": ..., "per_s": ..., "holds_per_s": ... (create),
"cpu_us_per_call": ..., "raw_pg_tps": ..., "raw_pg_batched_holds_per_s": ...,
"bare_grpc_per_s": ..., "ratio": ..., "ratio_batched": ..., "ratio_bare_grpc": ..., "failed": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import re
import subprocess
import tempfile
import time
from typing import Any

import grpc

from slotlock.feed import Feed
from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2, reservation_pb2_grpc
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
    parser.add_argument(
        "--events", type=int, default=1, help="events the load spreads over (1: one hot event)"
    )
    parser.add_argument(
        "--op",
        choices=("create", "confirm", "release"),
        default="create",
        help="the call to measure (confirm/release: on holds made beforehand)",
    )
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument(
        "--batched-holds", type=int, default=100, help="holds per transaction, batched limit"
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the pgbench baselines")
    parser.add_argument("--database-url", help="a real PostgreSQL server instead of embedded")
    parser.add_argument("--nats-url", help="a real NATS server instead of embedded")
    parser.set_defaults(handler=run)


# The statements CreateHold runs for a batch (reservation_service/sql/batches.sql, holds.sql), for
# pgbench with -M prepared: the clock is read once with the event lock and bound as a parameter
# (:db_now), exactly as the service does. (Comparing the lapsed-holds query with
# clock_timestamp() in its WHERE, which cannot use the index, made the raw figure look 2x
# slower than it is.) {holds} holds per transaction; the outbox rows carry a real payload.
PGBENCH_SCRIPT = """\
BEGIN;
SELECT *, clock_timestamp() AS db_now FROM events WHERE id = ANY('{{{event_id}}}'::uuid[])
  ORDER BY id FOR UPDATE \\gset
SELECT * FROM reservations
  WHERE event_id = ANY('{{{event_id}}}'::uuid[]) AND status = 'PENDING'
    AND {lapse_column} <= :db_now::timestamptz
  ORDER BY {lapse_column} FOR UPDATE SKIP LOCKED;
INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,
                          idempotency_key, request_fingerprint, created_at, updated_at, expires_at)
  SELECT gen_random_uuid(), '{event_id}', 1, 'DINNER', 'PENDING', 'bench', NULL, NULL,
         :db_now::timestamptz, :db_now::timestamptz, :db_now::timestamptz + interval '300 s'
  FROM generate_series(1, {holds});
UPDATE events AS e SET paid = u.paid, pending = u.pending, version = u.version,
                       updated_at = :db_now::timestamptz
  FROM unnest(ARRAY['{event_id}'::uuid], ARRAY[:paid::int], ARRAY[:pending::int + {holds}],
              ARRAY[:version::bigint + {holds}]) AS u (id, paid, pending, version)
  WHERE e.id = u.id;
INSERT INTO outbox (event_id, payload)
  SELECT '{event_id}', decode('{payload}', 'hex') FROM generate_series(1, {holds});
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
        events = [create_hot_event(system, f"BENCH-{n}") for n in range(args.events)]
        work: list[list[tuple[str, str]]] = []
        if args.op != "create":
            work = make_holds(system, events, args)
        service = _process_tree(system.service("reservation").process.pid)
        cpu_before = _cpu_seconds(service)
        ok, failed, seconds = measure_grpc(system.reservation_addr, events, work, args)
        service_cpu = _cpu_seconds(service) - cpu_before
        per_s = ok / seconds if seconds > 0 else 0.0
        cpu_per_call_us = service_cpu / ok * 1e6 if ok else 0.0
        what = {"create": "CreateHold", "confirm": "ConfirmHold", "release": "ReleaseHold"}
        spread = "one hot event" if args.events == 1 else f"{args.events} events"
        print(
            f"gRPC {what[args.op]} on {spread}: {per_s:,.0f}/s ({ok} in {seconds:.2f} s measured; "
            f"{args.workers} service worker(s), {args.concurrency} calls in flight over "
            f"{args.channels} connection(s) x {args.client_processes} client process(es))"
        )
        print(
            f"service CPU: {service_cpu:.2f} s over the run, {cpu_per_call_us:,.0f} us per call "
            "(every worker process)"
        )
        result: dict[str, Any] = {
            "op": args.op,
            "events": args.events,
            "per_s": round(per_s, 1),
            "cpu_us_per_call": round(cpu_per_call_us, 1),
            "failed": failed,
        }
        if args.op == "create":
            result["holds_per_s"] = round(per_s, 1)
        if args.op == "create" and not args.no_raw:
            sample = reservation_pb2_grpc.ReservationServiceStub(
                system.channel("reservation")
            ).CreateHold(
                reservation_pb2.CreateHoldRequest(event_id=events[0], quantity=1),
                timeout=10,
            )
            raw_event = create_hot_event(system, "BENCH-HOT-RAW")
            system.stop_service("reservation")  # pgbench gets the machine to itself
            raw_tps = measure_pgbench(system.database_url, raw_event, args, holds=1)
            print(
                f"raw Postgres, the service's statements, one hold per commit: {raw_tps:,.0f} tps "
                f"(pgbench -M prepared, {args.pgbench_clients} clients)"
            )
            batched = args.batched_holds * measure_pgbench(
                system.database_url, raw_event, args, holds=args.batched_holds
            )
            print(
                f"raw Postgres, the same statements, {args.batched_holds} holds per commit: "
                f"{batched:,.0f} holds/s (the batched limit)"
            )
            bare = measure_bare_grpc(events, sample.SerializeToString(), args)
            print(
                f"bare grpc.aio server, same messages, {args.workers} process(es): "
                f"{bare:,.0f} calls/s (no work behind the call)"
            )
            result.update(
                bare_grpc_per_s=round(bare, 1),
                ratio_bare_grpc=round(per_s / bare, 3) if bare else 0.0,
                raw_pg_tps=round(raw_tps, 1),
                raw_pg_batched_holds_per_s=round(batched, 1),
                ratio=round(per_s / raw_tps, 3) if raw_tps else 0.0,
                ratio_batched=round(per_s / batched, 3) if batched else 0.0,
            )
            print(
                f"ratio to one hold per commit: {result['ratio']:.2f}; to the batched limit: "
                f"{result['ratio_batched']:.2f}; to the bare gRPC server: "
                f"{result['ratio_bare_grpc']:.2f}"
            )
        if failed:
            print(f"FAILED: {failed} {what[args.op]} calls failed during the run")
        print(json.dumps(result))
    return 1 if failed else 0


def measure_bare_grpc(events: list[str], reply: bytes, args: argparse.Namespace) -> float:
    """CreateHold calls per second against a bare grpc.aio server (``--workers`` processes on
    one port, as the service runs) that answers every call with ``reply``, a real response: the
    ceiling the gRPC layer alone sets on this machine, measured by the same client."""
    from slotlock_cli.devstack import free_port, wait_for_port

    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    servers = [ctx.Process(target=_bare_server, args=(port, reply)) for _ in range(args.workers)]
    for server in servers:
        server.start()
    try:
        wait_for_port(port)
        time.sleep(0.5)  # every process listening
        ok, failed, seconds = measure_grpc(f"127.0.0.1:{port}", events, [], args)
    finally:
        for server in servers:
            server.terminate()
            server.join()
    if failed:
        print(f"FAILED: {failed} calls to the bare gRPC server failed")
    return ok / seconds if seconds > 0 else 0.0


def _bare_server(port: int, reply: bytes) -> None:
    asyncio.run(_serve_bare(port, reply))


async def _serve_bare(port: int, reply: bytes) -> None:
    response = reservation_pb2.CreateHoldResponse.FromString(reply)

    class Bare(reservation_pb2_grpc.ReservationServiceServicer):
        async def CreateHold(self, request: Any, context: Any) -> Any:
            return response

        async def GetEvent(self, request: Any, context: Any) -> Any:
            return catalog_pb2.Event(id=request.event_id)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    reservation_pb2_grpc.add_ReservationServiceServicer_to_server(Bare(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def make_holds(
    system: System, events: list[str], args: argparse.Namespace
) -> list[list[tuple[str, str]]]:
    """Holds to confirm or release, straight into the database (far faster than CreateHold),
    with their tokens minted from the service's secret; one list per client process."""
    from reservation_service.holds import HoldTokens

    count = max(20_000, int(args.seconds * 8_000))
    tokens = HoldTokens(system.hold_token_secret.encode())
    per_event = -(-count // len(events))
    found = insert_holds(system.database_url, events, per_event * len(events))
    random.shuffle(found)
    holds = [(hold_id, tokens.token_for(hold_id)) for hold_id, _ in found]
    return [holds[n :: args.client_processes] for n in range(args.client_processes)]


def insert_holds(
    database_url: str,
    events: list[str],
    count: int,
    *,
    first_expiry: float | None = None,
    spread_s: float = 0.0,
) -> list[tuple[str, float]]:
    """``count`` PENDING holds of one seat, straight into the database (far faster than
    CreateHold), dealt round-robin over ``events``, whose pending counters and versions are raised
    to match in the same transaction. Hold n expires at ``first_expiry`` (a Unix time; default: an
    hour from now) + n * ``spread_s`` / ``count``. Returns (id, expires_at as Unix time) in n order.
    """
    import psycopg

    start = time.time() + 3600 if first_expiry is None else first_expiry
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = conn.execute(
            "WITH new AS ("
            " INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,"
            "  created_at, updated_at, expires_at)"
            " SELECT gen_random_uuid(), (%(events)s::uuid[])[1 + n %% %(k)s], 1, 'DINNER',"
            "  'PENDING', 'bench', now(), now(),"
            "  to_timestamp(%(start)s::float8 + n * %(gap)s::float8)"
            " FROM generate_series(0, %(count)s - 1) AS n"
            " RETURNING id::text, event_id, expires_at),"
            " bump AS (UPDATE events AS e SET pending = e.pending + c.n, version = e.version + 1"
            "  FROM (SELECT event_id, count(*)::int AS n FROM new GROUP BY event_id) AS c"
            "  WHERE e.id = c.event_id)"
            " SELECT id, extract(epoch FROM expires_at)::float8 FROM new ORDER BY expires_at, id",
            {
                "events": events,
                "k": len(events),
                "start": start,
                "gap": spread_s / count if count else 0.0,
                "count": count,
            },
        ).fetchall()
    return [(str(row[0]), float(row[1])) for row in found]


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


def measure_grpc(
    address: str, events: list[str], work: list[list[tuple[str, str]]], args: argparse.Namespace
) -> tuple[int, int, float]:
    """(calls that succeeded, calls that failed, seconds measured: the longest client's)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.client_processes) as pool:
        counts = pool.starmap(
            _client_process,
            [
                (
                    address,
                    events,
                    args.op,
                    work[n] if work else [],
                    args.concurrency,
                    args.seconds,
                    args.channels,
                )
                for n in range(args.client_processes)
            ],
        )
    ok = sum(c[0] for c in counts)
    failed = sum(c[1] for c in counts)
    seconds = max(c[2] for c in counts)
    if any(c[3] for c in counts):
        print("warning: the holds made beforehand ran out before the end of the run")
    return ok, failed, seconds


def _client_process(
    address: str,
    events: list[str],
    op: str,
    work: list[tuple[str, str]],
    concurrency: int,
    seconds: float,
    channels: int,
) -> tuple[int, int, float, bool]:
    return asyncio.run(_drive(address, events, op, work, concurrency, seconds, channels))


async def _drive(
    address: str,
    events: list[str],
    op: str,
    work: list[tuple[str, str]],
    concurrency: int,
    seconds: float,
    channels: int,
) -> tuple[int, int, float, bool]:
    ok = failed = 0
    errors: dict[str, int] = {}
    # Separate connections (not one shared subchannel), so the kernel spreads them over workers.
    opened = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [reservation_pb2_grpc.ReservationServiceStub(channel) for channel in opened]
    requests = [
        reservation_pb2.CreateHoldRequest(event_id=event_id, quantity=1, customer_ref="bench")
        for event_id in events
    ]
    for stub in stubs:  # warm up each connection (not counted)
        await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=events[0]))
    todo = list(reversed(work))
    ran_out = False
    started = time.monotonic()
    deadline = started + seconds

    async def worker(n: int, stub: reservation_pb2_grpc.ReservationServiceStub) -> None:
        nonlocal ok, failed, ran_out
        turn = n
        while time.monotonic() < deadline:
            try:
                if op == "create":
                    await stub.CreateHold(requests[turn % len(requests)], timeout=10)
                    turn += concurrency
                else:
                    if not todo:
                        ran_out = True
                        return
                    reservation_id, token = todo.pop()
                    if op == "confirm":
                        await stub.ConfirmHold(
                            reservation_pb2.ConfirmHoldRequest(
                                reservation_id=reservation_id,
                                hold_token=token,
                                payment_reference=f"pay-{reservation_id}",
                            ),
                            timeout=10,
                        )
                    else:
                        await stub.ReleaseHold(
                            reservation_pb2.ReleaseHoldRequest(
                                reservation_id=reservation_id, hold_token=token
                            ),
                            timeout=10,
                        )
                ok += 1
            except grpc.aio.AioRpcError as error:
                failed += 1
                errors[error.code().name] = errors.get(error.code().name, 0) + 1

    await asyncio.gather(*(worker(n, stubs[n % channels]) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    for channel in opened:
        await channel.close()
    if errors:
        print(f"failed calls by code: {errors}")
    return ok, failed, elapsed, ran_out


def measure_pgbench(
    database_url: str, event_id: str, args: argparse.Namespace, *, holds: int
) -> float:
    """Transactions per second of PGBENCH_SCRIPT with ``holds`` holds per transaction."""
    sample = changes_pb2.EventChange(type=changes_pb2.CHANGE_TYPE_HOLD_CREATED)
    sample.event.id = event_id
    sample.event.experience_title = "Benchmark Night"
    sample.reservation.id = event_id
    payload = sample.SerializeToString().hex()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(
            PGBENCH_SCRIPT.format(
                event_id=event_id,
                payload=payload,
                holds=holds,
                lapse_column=_lapse_column(database_url),
            )
        )
    result = subprocess.run(
        [
            str(postgres_install_dir() / "bin" / "pgbench"),
            "--no-vacuum",
            "--protocol",
            "prepared",
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
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(1)} transactions failed:\n{result.stdout}")
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def _lapse_column(database_url: str) -> str:
    """The column the service's lapsed-holds query reads: lapses_at from migration 0006 on."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'reservations' AND column_name = 'lapses_at'"
        ).fetchone()
    return "lapses_at" if found else "expires_at"


def _process_tree(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu_seconds(processes: list[Any]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total
