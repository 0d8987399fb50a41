"""`slotlock bench sse`: N browsers on one gateway's Server-Sent Events stream (/api/stream):
the gateway's memory per idle browser, and the latency from a change to every browser.

The whole system runs as processes (reservation, availability, gateway); the browsers are plain
HTTP/1.1 connections held by separate client processes (one per 2,500 browsers), each reading
its sockets in one epoll loop, so that measuring costs far less CPU per frame than the gateway
spends writing it. Each browser first receives the catalog (``--events`` events: the gateway's
snapshot), then the changes: change k is a ``CreateHold`` on one event that makes its
``pending`` equal k, and a browser has "delivered" change k once it has seen pending >= k
(conflation to a newer state counts); its latency is that moment minus the ``CreateHold``
return. "That moment" is the kernel's receive time of the bytes at the browser's socket
(SO_TIMESTAMPNS): the gateway's figure, whatever the client processes were busy with. The time
the client process read them is reported too; the gap is the clients' own lag.

The machine is shared, so the output says who used it: the changes per second actually offered,
the CPU of the gateway and of each client process from the first change to the last delivery,
and WARNING lines when the clients rather than the gateway may have set the figure (a client
process busy over 80% of the time, the cores nearly all used, or bytes left waiting in the
clients' sockets).

Memory per browser: the gateway's RSS with every browser connected and idle, minus its RSS
before the first one, divided by N.

Prints figures; the last line is JSON: clients, rate, offered_rate, p50_ms, p99_ms, max_ms
(at the sockets), read_p99_ms, delivered_ratio, per_client_kb, rss_mb, gateway_cpu_s,
clients_cpu_s, wall_s, clients_limited, failures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from slotlock.feed import Feed
from slotlock_cli.bench.fanout import deliveries, percentile
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
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="gateway processes sharing its port (SLOTLOCK_WORKERS; 1)",
    )
    parser.add_argument("--database-url", help="a real PostgreSQL server instead of embedded")
    parser.add_argument("--nats-url", help="a real NATS server instead of embedded")
    parser.set_defaults(handler=run)


# -- the browser client process ----------------------------------------------------------------

SO_TIMESTAMPNS = 35  # Linux: the kernel's receive time of the newest bytes, with each read
_TIMESPEC = struct.Struct("qq")
READ_BYTES = 65536


class Browsers:
    """Child: ``count`` SSE connections read by one epoll loop (no task per connection: a
    measuring process must cost far less per frame than the gateway it measures). Each read
    notes the highest pending count of the hot event in it, with two times: when the kernel
    received those bytes (SO_TIMESTAMPNS: what the gateway's latency is), and when this
    process read them (later by however long this process was busy with other sockets)."""

    def __init__(self, host: str, port: int, event_id: str, count: int) -> None:
        self.address = (host, port)
        self.marker = f'"event_id":"{event_id}"'.encode()
        self.count = count
        self.request = (
            f"GET /api/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.epoll = select.epoll()
        self.socks: dict[int, tuple[int, socket.socket]] = {}
        self.rest = [b""] * count
        self.arrived: list[list[tuple[int, float]]] = [[] for _ in range(count)]
        self.read: list[list[tuple[int, float]]] = [[] for _ in range(count)]
        self.has_state = [False] * count
        self.target = 0  # the last change's pending count, once known
        self.counted = [False] * count  # has it (at its socket)
        self.finished = 0
        self.failures: list[str] = []
        self.full_reads = 0  # reads that filled the buffer: more was waiting in the kernel
        self.batch_s: list[float] = []  # how long each pass over the ready sockets took
        # CLOCK_REALTIME (the kernel's stamps) minus CLOCK_MONOTONIC (the parent's times).
        self.offset = time.time() - time.monotonic()

    def connect(self, number: int) -> None:
        for attempt in range(20):  # a refused connect (backlog full) is tried again
            try:
                sock = socket.create_connection(self.address, timeout=10)
                break
            except OSError as error:
                self.failures.append(f"connect: {error}")
                time.sleep(0.2 * (attempt + 1))
        else:
            return
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.sendall(self.request)
        sock.setblocking(False)
        self.socks[sock.fileno()] = (number, sock)
        self.epoll.register(sock.fileno(), select.EPOLLIN)

    def poll(self, timeout: float) -> None:
        """Read every socket with something to read (waiting up to ``timeout`` s for one)."""
        ready = self.epoll.poll(timeout)
        started = time.monotonic()
        cmsg = socket.CMSG_SPACE(_TIMESPEC.size)
        for fd, _ in ready:
            if fd not in self.socks:
                continue
            number, sock = self.socks[fd]
            try:
                data, ancillary, _, _ = sock.recvmsg(READ_BYTES, cmsg)
            except BlockingIOError:
                continue
            except OSError as error:
                data, ancillary = b"", []
                self.failures.append(f"read: {error}")
            now = time.monotonic()
            if not data:
                self.failures.append("closed by the gateway")
                self.epoll.unregister(fd)
                del self.socks[fd]
                sock.close()
                continue
            if len(data) == READ_BYTES:
                self.full_reads += 1
            arrived = now
            for level, kind, stamp in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = _TIMESPEC.unpack(stamp)
                    arrived = min(now, seconds + nanos / 1e9 - self.offset)
            self.on_data(number, data, arrived, now)
        if ready:
            self.batch_s.append(time.monotonic() - started)

    def on_data(self, number: int, data: bytes, arrived: float, now: float) -> None:
        buffer = self.rest[number] + data if self.rest[number] else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.rest[number] = buffer
            return
        self.rest[number] = buffer[end + 2 :]
        at = buffer.rfind(self.marker, 0, end)
        if at < 0:
            return
        found = _PENDING.search(buffer, at, buffer.find(b"\n\n", at))
        if found is None:
            return
        pending = int(found.group(1))
        self.arrived[number].append((pending, arrived))
        self.read[number].append((pending, now))
        self.has_state[number] = True
        if self.target and pending >= self.target and not self.counted[number]:
            self.counted[number] = True
            self.finished += 1

    def run(self) -> None:
        for number in range(self.count):
            self.connect(number)
            if number % 100 == 99:
                self.poll(0)  # take the snapshots as they come; connect in waves
        deadline = time.monotonic() + 300
        while not all(self.has_state) and time.monotonic() < deadline:
            self.poll(0.05)
        if not all(self.has_state):
            print(
                f"only {sum(self.has_state)} of {self.count} browsers got the event; "
                f"{self.failures[:5]}",
                flush=True,
            )
            return
        for kept in (*self.arrived, *self.read):
            kept.clear()
        self.batch_s.clear()
        self.full_reads = 0
        print("READY", flush=True)
        self.epoll.register(sys.stdin.fileno(), select.EPOLLIN)
        times: list[float] = []
        stop_at = math.inf
        while time.monotonic() < stop_at and (not times or self.finished < self.count):
            if not times and any(fd == sys.stdin.fileno() for fd, _ in self.epoll.poll(0)):
                # The parent's change times: read on until every browser has the last one,
                # or 20 s more.
                times = json.loads(sys.stdin.readline())["times"]
                self.target = len(times)
                for number, mine in enumerate(self.arrived):
                    if mine and mine[-1][0] >= self.target:
                        self.counted[number] = True
                self.finished = sum(self.counted)
                stop_at = time.monotonic() + 20
            self.poll(0.05)
        report = deliveries(self.arrived, times, self.failures)
        read = deliveries(self.read, times, [])
        self.batch_s.sort()
        report["read_latencies_ms"] = read["latencies_ms"]
        report["full_reads"] = self.full_reads
        report["batch_p99_ms"] = round(percentile(self.batch_s, 0.99) * 1000, 2)
        report["batch_max_ms"] = round(self.batch_s[-1] * 1000, 2) if self.batch_s else 0.0
        print(json.dumps(report), flush=True)
        sys.stdin.readline()  # stay until the parent has read this process's CPU time


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
    if args.gateway_workers > 1:
        system.services["gateway"].env["SLOTLOCK_WORKERS"] = str(args.gateway_workers)
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
        parent = psutil.Process(system.service("gateway").process.pid)
        gateway = [parent, *parent.children(recursive=True)]  # its workers, if any

        def gateway_rss() -> int:
            return sum(int(process.memory_info().rss) for process in gateway)

        rss_before = gateway_rss()
        host, port = system.service("gateway").address.rsplit(":", 1)
        processes = args.client_processes or max(1, math.ceil(args.clients / CLIENTS_PER_PROCESS))
        started = time.monotonic()
        start_browsers(host, int(port), hot, args.clients, processes, browsers)
        print(
            f"{args.clients} SSE browsers connected in {processes} client process(es) in "
            f"{time.monotonic() - started:.1f}s; catalog of {args.events} events"
        )
        time.sleep(1.0)
        rss_idle = gateway_rss()
        per_client_kb = (rss_idle - rss_before) / max(1, args.clients) / 1024

        stub = reservation_pb2_grpc.ReservationServiceStub(system.channel("reservation"))
        clients = [psutil.Process(b.pid) for b in browsers]
        cpu = CpuMeter([*gateway, *clients])
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
        rss_after = gateway_rss()
        payload = json.dumps({"times": times}) + "\n"
        for browser in browsers:
            browser.stdin.write(payload)
            browser.stdin.flush()
        results = [json.loads(browser.stdout.readline()) for browser in browsers]
        # CPU from the first change until every browser had the last one (or gave up).
        used, wall = cpu.read()
        machine = cpu.machine_busy()
        gateway_cpu, client_cpu = sum(used[: len(gateway)]), used[len(gateway) :]
        offered = (args.updates - 1) / (times[-1] - times[0]) if len(times) > 1 else args.rate

        latencies = sorted(x for r in results for x in r["latencies_ms"])
        read_latencies = sorted(x for r in results for x in r["read_latencies_ms"])
        delivered = sum(r["delivered"] for r in results)
        failures = sum(r["failures"] for r in results)
        kinds = sorted({k for r in results for k in r["failure_kinds"]})
        full_reads = sum(r["full_reads"] for r in results)
        batch_max_ms = max(r["batch_max_ms"] for r in results)
        expected = args.clients * args.updates
        cores = os.cpu_count() or 1
        print(
            f"gateway RSS: {rss_before / 2**20:.1f} MB before browsers, "
            f"{rss_idle / 2**20:.1f} MB with them idle ({per_client_kb:.1f} KB per browser), "
            f"{rss_after / 2**20:.1f} MB after the updates"
        )
        print(
            f"offered {offered:.1f} changes/s ({args.updates} changes, {args.rate:g}/s asked); "
            f"{args.clients * offered:,.0f} browser updates/s"
        )
        print(
            f"CPU over {wall:.1f}s (first change to the last delivery): gateway "
            f"{gateway_cpu:.2f}s ({gateway_cpu / wall:.0%} of a core; {len(gateway)} "
            f"process(es)), browser clients "
            f"{sum(client_cpu):.2f}s ({', '.join(f'{c / wall:.0%}' for c in client_cpu)} "
            f"of a core each); the rest of the machine (services, NATS, Postgres, anything "
            f"else) {machine - sum(used):.2f}s; {machine / (cores * wall):.0%} of its {cores} "
            "cores busy"
        )
        if failures:
            print(f"browser connections that failed: {failures} {kinds}")
        p99, read_p99 = percentile(latencies, 0.99), percentile(read_latencies, 0.99)
        print(
            f"update latency to the browsers' sockets: p50 {percentile(latencies, 0.5):.1f} ms, "
            f"p99 {p99:.1f} ms, max {latencies[-1] if latencies else math.nan:.1f} ms; "
            f"delivered {delivered} of {expected}"
        )
        print(
            f"as read by the client processes: p50 {percentile(read_latencies, 0.5):.1f} ms, "
            f"p99 {read_p99:.1f} ms (a pass over their ready sockets took up to "
            f"{batch_max_ms:.0f} ms; {full_reads} reads found more waiting)"
        )
        warnings = []
        if delivered < expected:
            warnings.append(
                f"{expected - delivered} browser updates had not arrived 20 s after the last "
                "change; the percentiles count only those that had (the real ones are worse)"
            )
        if offered < 0.9 * args.rate:
            warnings.append(
                f"only {offered:.1f} of the {args.rate:g} changes/s asked were made "
                "(the reservation service or this process was the limit)"
            )
        if max(client_cpu) > 0.8 * wall:
            warnings.append(
                "a browser client process was busy over 80% of the time: the clients, not "
                "only the gateway, limited how fast frames were read"
            )
        if gateway_cpu + sum(client_cpu) > 0.9 * cores * wall:
            warnings.append("the gateway and the clients together used nearly every core")
        elif machine > 0.9 * cores * wall:
            warnings.append(
                "the machine's cores were nearly all busy: the gateway had only what the other "
                "processes left it"
            )
        if full_reads or read_p99 > 2 * p99 + 50:
            warnings.append(
                "the client processes fell behind reading (bytes waited in their sockets): "
                "the socket arrival figure is the gateway's, the read figure is not"
            )
        for warning in warnings:
            print(f"WARNING: {warning}")
        print(
            json.dumps(
                {
                    "clients": args.clients,
                    "gateway_workers": args.gateway_workers,
                    "events": args.events,
                    "rate": args.rate,
                    "offered_rate": round(offered, 2),
                    "p50_ms": round(percentile(latencies, 0.5), 2),
                    "p99_ms": round(p99, 2),
                    "max_ms": round(latencies[-1], 2) if latencies else None,
                    "read_p99_ms": round(read_p99, 2),
                    "delivered_ratio": round(delivered / expected, 4) if expected else None,
                    "per_client_kb": round(per_client_kb, 1),
                    "rss_mb": round(rss_idle / 2**20, 1),
                    "gateway_cpu_s": round(gateway_cpu, 2),
                    "clients_cpu_s": round(sum(client_cpu), 2),
                    "wall_s": round(wall, 2),
                    "others_cpu_s": round(machine - sum(used), 2),
                    "clients_limited": bool(warnings),
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


class CpuMeter:
    """CPU seconds of some processes and of the whole machine since it was made, and the wall
    time."""

    def __init__(self, processes: list[Any]) -> None:
        self.processes = processes
        self.started = time.monotonic()
        self.before = [self._used(p) for p in processes]
        self.machine_before = self._machine()

    @staticmethod
    def _machine() -> float:
        import psutil

        times = psutil.cpu_times()._asdict()  # guest time is counted in user already
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return float(sum(times.get(name, 0.0) for name in busy))

    def machine_busy(self) -> float:
        """CPU seconds the whole machine spent busy since the meter was made."""
        return self._machine() - self.machine_before

    @staticmethod
    def _used(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def read(self) -> tuple[list[float], float]:
        used = [self._used(p) - b for p, b in zip(self.processes, self.before, strict=True)]
        return used, time.monotonic() - self.started


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        Browsers(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])).run()
