"""`slotlock bench sse`: N browsers on one gateway's Server-Sent Events stream (/api/stream):
the gateway's memory per idle browser, and the latency from a change to every browser.

The whole system runs as processes (reservation, availability, gateway); the browsers are plain
HTTP/1.1 connections held by separate client processes, so the gateway does not share an
interpreter with them (on a small box they still share the CPU: the output gives both sides'
CPU). Each browser first receives the catalog (``--events`` events: the gateway's snapshot), then
the changes: update k is a ``CreateHold`` on one event that makes its ``pending`` equal k, and a
browser has "delivered" update k once it has seen pending >= k (conflation to a newer state
counts); its latency is that moment minus the ``CreateHold`` return. Clocks are CLOCK_MONOTONIC,
shared by every process of the machine.

Memory per browser: the gateway's RSS with every browser connected and idle, minus its RSS
before the first one, divided by N.

Prints figures; the last line is JSON: clients, p50_ms, p99_ms, max_ms, delivered_ratio,
per_client_kb, rss_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from slotlock.feed import Feed
from slotlock_cli.bench.fanout import percentile, report_deliveries
from slotlock_cli.bench.holds import BENCH_ENV
from slotlock_cli.system import System

CLIENTS_PER_PROCESS = 2500
_PENDING = re.compile(rb'"pending":(\d+)')


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sse", help="gateway memory per SSE browser and update latency to N browsers"
    )
    parser.add_argument("--clients", type=int, default=1000, help="SSE browsers (1000)")
    parser.add_argument("--events", type=int, default=100, help="events in the catalog (100)")
    parser.add_argument("--updates", type=int, default=50, help="changes to make (50)")
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second (10)")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=0,
        help=f"browser processes (0 = one per {CLIENTS_PER_PROCESS} browsers)",
    )
    parser.add_argument("--database-url", help="a real PostgreSQL server instead of embedded")
    parser.add_argument("--nats-url", help="a real NATS server instead of embedded")
    parser.set_defaults(handler=run)


# -- the browser client process ----------------------------------------------------------------


async def browse_many(host: str, port: int, event_id: str, count: int) -> None:
    """Child: hold ``count`` SSE connections, report READY once each has the event's state,
    then (given the change times on stdin) the latency of every update at every browser."""
    marker = f'"event_id":"{event_id}"'.encode()
    seen: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    first = [asyncio.Event() for _ in range(count)]
    target = [0]
    finished = [0]
    done = asyncio.Event()
    failures: list[str] = []
    request = (
        f"GET /api/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def one(number: int) -> None:
        mine = seen[number]
        counted = False
        for attempt in range(20):  # a refused connect (backlog full) is tried again
            try:
                reader, writer = await asyncio.open_connection(host, port)
                break
            except OSError as error:
                failures.append(f"connect: {error}")
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            return
        writer.write(request)
        rest = b""
        while True:
            data = await reader.read(65536)
            if not data:
                failures.append("closed by the gateway")
                return
            now = time.monotonic()
            frames = (rest + data).split(b"\n\n")
            rest = frames.pop()
            for frame in frames:
                if marker not in frame:
                    continue
                found = _PENDING.search(frame)
                if found is None:
                    continue
                pending = int(found.group(1))
                mine.append((pending, now))
                first[number].set()
                if not counted and target[0] and pending >= target[0]:
                    counted = True
                    finished[0] += 1
                    if finished[0] == count:
                        done.set()

    tasks = []
    for number in range(count):
        tasks.append(asyncio.create_task(one(number)))
        if number % 200 == 199:
            await asyncio.sleep(0.05)  # connect in waves: the gateway's accept backlog is finite
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in first)), 300)
    except TimeoutError:
        ready = sum(event.is_set() for event in first)
        print(f"only {ready} of {count} browsers got the event; {failures[:5]}", flush=True)
        return
    for mine in seen:
        mine.clear()
    print("READY", flush=True)

    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    times: list[float] = json.loads(line)["times"]
    target[0] = len(times)
    finished[0] = sum(1 for mine in seen if mine and mine[-1][0] >= target[0])
    if finished[0] < count:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 20)
    report_deliveries(seen, times, failures)
    for task in tasks:
        task.cancel()


# -- the run -----------------------------------------------------------------------------------


def start_browsers(
    host: str, port: int, event_id: str, clients: int, processes: int, started: list[Any]
) -> None:
    share = [clients // processes + (1 if n < clients % processes else 0) for n in range(processes)]
    for count in share:
        if count:
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "slotlock_cli.bench.sse",
                        "--child",
                        host,
                        str(port),
                        event_id,
                        str(count),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
    for process in started:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"a browser client failed to start (said {line!r})")


def wait_live(url: str, within: float = 60.0) -> None:
    """Until the gateway's fan-out is live (its watch on the availability service is up)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
                if json.loads(reply.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway's live updates never started")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    import psutil

    from slotlock.v1 import reservation_pb2, reservation_pb2_grpc

    feed = Feed(stream=f"BENCH_SSE_{uuid.uuid4().hex[:8]}", subject_prefix="bench.sse")
    system = System(
        database_url=args.database_url,
        nats_url=args.nats_url,
        feed=feed,
        gateway=True,
        hold_ttl_s=600,
        log_level="WARNING",
        tls=False,
        extra_env=BENCH_ENV,
    )
    browsers: list[Any] = []
    try:
        system.start()
        events = [
            system.seed_event(
                f"BENCH-SSE-{n}",
                capacity=1_000_000,
                title="Dinner in the dark",
                local_date="2099-12-31",
                dinner_price=1,
            ).id
            for n in range(args.events)
        ]
        # The last event created comes last in the snapshot a browser gets first: a browser that
        # has it has the whole catalog, so the updates never race the snapshots still in flight.
        hot = events[-1]
        wait_live(system.gateway_url)
        time.sleep(1.0)  # the catalog reaches the gateway through the feed
        gateway = psutil.Process(system.service("gateway").process.pid)
        rss_before = gateway.memory_info().rss
        host, port = system.service("gateway").address.rsplit(":", 1)
        processes = args.client_processes or max(1, math.ceil(args.clients / CLIENTS_PER_PROCESS))
        started = time.monotonic()
        start_browsers(host, int(port), hot, args.clients, processes, browsers)
        print(
            f"{args.clients} SSE browsers connected in {processes} client process(es) in "
            f"{time.monotonic() - started:.1f}s; catalog of {args.events} events"
        )
        time.sleep(1.0)
        rss_idle = gateway.memory_info().rss
        per_client_kb = (rss_idle - rss_before) / max(1, args.clients) / 1024

        stub = reservation_pb2_grpc.ReservationServiceStub(system.channel("reservation"))
        cpu_before = gateway.cpu_times()
        client_cpu_before = [psutil.Process(b.pid).cpu_times() for b in browsers]
        times: list[float] = []
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        for k in range(1, args.updates + 1):
            stub.CreateHold(
                reservation_pb2.CreateHoldRequest(event_id=hot, quantity=1, customer_ref=f"b{k}"),
                timeout=10,
            )
            times.append(time.monotonic())
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        cpu_after = gateway.cpu_times()
        gateway_cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
        client_cpu = sum(
            after.user + after.system - before.user - before.system
            for before, after in zip(
                client_cpu_before,
                [psutil.Process(b.pid).cpu_times() for b in browsers],
                strict=True,
            )
        )
        rss_after = gateway.memory_info().rss

        payload = json.dumps({"times": times}) + "\n"
        for browser in browsers:
            browser.stdin.write(payload)
            browser.stdin.flush()
        latencies: list[float] = []
        delivered = failures = 0
        kinds: set[str] = set()
        for browser in browsers:
            result = json.loads(browser.stdout.readline())
            latencies += result["latencies_ms"]
            delivered += result["delivered"]
            failures += result["failures"]
            kinds.update(result["failure_kinds"])
        latencies.sort()
        expected = args.clients * args.updates
        print(
            f"gateway RSS: {rss_before / 2**20:.1f} MB before browsers, "
            f"{rss_idle / 2**20:.1f} MB with them idle ({per_client_kb:.1f} KB per browser), "
            f"{rss_after / 2**20:.1f} MB after the updates"
        )
        print(
            f"CPU while changing: gateway {gateway_cpu:.2f}s, browser clients {client_cpu:.2f}s "
            f"({args.updates} updates at {args.rate:g}/s)"
        )
        if failures:
            print(f"browser connections that failed: {failures} {sorted(kinds)}")
        print(
            f"update latency to the browsers: p50 {percentile(latencies, 0.5):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms, max "
            f"{latencies[-1] if latencies else float('nan'):.1f} ms; delivered "
            f"{delivered} of {expected}"
        )
        print(
            json.dumps(
                {
                    "clients": args.clients,
                    "events": args.events,
                    "p50_ms": round(percentile(latencies, 0.5), 2),
                    "p99_ms": round(percentile(latencies, 0.99), 2),
                    "max_ms": round(latencies[-1], 2) if latencies else None,
                    "delivered_ratio": round(delivered / expected, 4) if expected else None,
                    "per_client_kb": round(per_client_kb, 1),
                    "rss_mb": round(rss_idle / 2**20, 1),
                    "failures": failures,
                }
            )
        )
        return 0
    finally:
        for browser in browsers:
            browser.kill()
            browser.wait()
        system.stop()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        asyncio.run(browse_many(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
