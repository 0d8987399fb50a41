"""`slotlock bench fanout`: propagation latency from a change to N concurrent watchers.

The availability service runs as its own process (``--workers N``: N processes sharing its port,
default one per core, at most 2); the watchers live in separate client processes so the measured
service does not share an interpreter with them. On a small box they still share the CPU, so by
default they are lean (``--client raw``: WatchAvailability over plain HTTP/2 without a gRPC
library, a few microseconds a message where grpc.aio takes about as much as the service spends
sending it; ``--client grpc`` for grpc.aio), and ``--pin`` keeps them off the service's CPU.
Changes are real ``CreateHold`` calls through the reservation service (``--driver reservation``,
the default when it starts), or ``EventChange`` messages published straight to JetStream as the
outbox relay would (``--driver publish``; also the fallback, which the output says).

Update k makes the event's ``pending`` equal k, so a watcher has "delivered" update k once it has
seen pending >= k (conflation to a newer state counts); its latency is that moment minus the
change time (``CreateHold`` return, or just before the JetStream publish). Clocks are
CLOCK_MONOTONIC, shared by all processes of the machine. Where the time goes is split per change:
to the first watcher (the path through the services and the feed), then from the first watcher
to the last (the sweep over every stream).

Prints figures; the last line is JSON: watchers, p50_ms, p99_ms, max_ms, delivered_ratio, rss_mb,
per_watcher_kb, driver, workers, other_cpu_s (CPU-s other processes used while changing: load
that is not this benchmark's inflates the figures), first_p99_ms, sweep_p99_ms, pinned, client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import statistics
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from slotlock.feed import Feed
from slotlock_cli import builders
from slotlock_cli.bench.expiry import MachineLoad, _postmaster_pid
from slotlock_cli.bench.holds import BENCH_ENV
from slotlock_cli.system import System

# One availability worker per core, at most 2. On this 2-core box, in quiet runs with the lean
# clients, 2 workers gave p99 26-30 ms at 1,000 watchers against 35-39 ms with one, and the same
# at 5,000 (178-245 against 167-243 ms: the benchmark saturates the machine there), for more CPU
# per delivery and a second copy of the view.
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))

CAPACITY = 1_000_000
SERVICE_NAME = "slotlock.v1.AvailabilityService"
# Many connections per client process, so that the kernel spreads them evenly over the service's
# workers (SO_REUSEPORT picks a worker per connection by a hash, not per stream: 20 connections
# split as unevenly as 8/12).
WATCHERS_PER_CHANNEL = 10


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fanout", help="latency from a change to N availability watchers"
    )
    parser.add_argument("--watchers", type=int, default=1000, help="concurrent watchers (1000)")
    parser.add_argument("--updates", type=int, default=100, help="changes to make (100)")
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second (20)")
    parser.add_argument(
        "--clients", type=int, default=0, help="watcher processes (0 = one per 1000 watchers, <= 4)"
    )
    parser.add_argument(
        "--client",
        choices=("raw", "grpc"),
        default="raw",
        help="watcher clients: raw (WatchAvailability over plain HTTP/2, a few us of CPU per "
        "message, the default) or grpc (grpc.aio, ~30 us per message, as much as the service)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="availability service processes sharing the port (SLOTLOCK_WORKERS; "
        f"default {DEFAULT_WORKERS}: one per core, at most 2)",
    )
    parser.add_argument(
        "--driver",
        choices=("auto", "reservation", "publish"),
        default="auto",
        help="make changes with CreateHold, or by publishing EventChange (auto: try CreateHold)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="keep the watcher clients off the availability service's cores: the service (all "
        "its workers) on the last CPU, the clients on the others (needs 2+ CPUs; on 2 CPUs the "
        "workers then share one core, and the clients, ~10 us of CPU per message received, fall "
        "behind at 5,000 watchers: their own lag is what gets measured)",
    )
    parser.add_argument("--nats-url", default=None, help="use this NATS instead of an embedded one")
    parser.add_argument("--database-url", default=None, help="use this Postgres server")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep service logs here")
    parser.set_defaults(handler=run)


# -- the watcher client process ----------------------------------------------------------------


async def watch_many(address: str, event_id: str, count: int) -> None:
    """Child: hold ``count`` watch streams, report READY, then (given the change times on
    stdin) the latency of every update at every watcher."""
    import grpc

    from slotlock.v1 import availability_pb2, availability_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(math.ceil(count / WATCHERS_PER_CHANNEL))
    ]
    seen: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    first = [asyncio.Event() for _ in range(count)]
    target = [0]
    done = asyncio.Event()
    finished = [0]

    failures: list[str] = []

    async def one(number: int) -> None:
        stub = availability_pb2_grpc.AvailabilityServiceStub(channels[number % len(channels)])
        mine = seen[number]
        counted = False
        while True:  # a stream that fails (overloaded box, connect timeout) is opened again
            call = stub.WatchAvailability(
                availability_pb2.WatchAvailabilityRequest(event_ids=[event_id]),
                wait_for_ready=True,
            )
            try:
                async for message in call:
                    mine.append((message.pending, time.monotonic()))
                    first[number].set()
                    if not counted and target[0] and message.pending >= target[0]:
                        counted = True
                        finished[0] += 1
                        if finished[0] == count:
                            done.set()
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
                await asyncio.sleep(0.1)

    # All at once on purpose: a reconnect storm is what a replica restart looks like.
    tasks = [asyncio.create_task(one(number)) for number in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in first)), 120)
    except TimeoutError:
        ready = sum(event.is_set() for event in first)
        print(f"only {ready} of {count} watchers got a first message; {failures[:5]}", flush=True)
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
            await asyncio.wait_for(done.wait(), 10)
    report_deliveries(seen, times, failures)
    for task in tasks:
        task.cancel()
    for channel in channels:
        await channel.close(None)


# -- the lean watcher client: WatchAvailability over plain HTTP/2, without a gRPC library -------
#
# grpc.aio spends about as much CPU receiving a message as the service spends sending it (~30 us:
# a completion, a wake-up of the event loop, a future, a task step). On a machine where the
# clients share the service's cores, that is CPU taken from the service being measured. This
# client speaks just enough HTTP/2 (h2c, as the bench's services serve it) to open the streams
# and read their messages: a few microseconds a message. ``--client grpc`` keeps grpc.aio.

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_END_STREAM = _ACK = 0x1
_PADDED = 0x8
_BIG_WINDOW = 2**31 - 1
_FRAME_HEADER = struct.Struct(">BHBBI")  # length (8 + 16 bits), type, flags, stream id


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing (no Huffman; both shorter than 127)."""
    return b"\x00" + bytes((len(name),)) + name.encode() + bytes((len(value),)) + value.encode()


class RawWatchConnection(asyncio.Protocol):
    """One connection carrying ``len(streams)`` WatchAvailability streams. For each message of
    stream i, ``on_message(i, payload, now)``; an ended or reset stream goes to ``failures``."""

    def __init__(self, authority: str, request: bytes, streams: list[int], on_message: Any) -> None:
        self.authority = authority
        self.request = request
        self.streams = streams  # watcher numbers, in stream-id order
        self.on_message = on_message
        self.failures: list[str] = []
        self._rest = b""
        self._partial: dict[int, bytes] = {}
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        settings = (0x4).to_bytes(2, "big") + _BIG_WINDOW.to_bytes(4, "big")  # INITIAL_WINDOW
        out = [
            _PREFACE,
            _frame(_SETTINGS, 0, 0, settings),
            _frame(0x8, 0, 0, (_BIG_WINDOW - 65535).to_bytes(4, "big")),  # connection window
        ]
        path = f"/{SERVICE_NAME}/WatchAvailability"
        headers = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        body = b"\x00" + len(self.request).to_bytes(4, "big") + self.request
        for n in range(len(self.streams)):
            stream_id = 2 * n + 1
            out.append(_frame(_HEADERS, 0x4, stream_id, headers))  # END_HEADERS
            out.append(_frame(_DATA, _END_STREAM, stream_id, body))
        transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self._rest:
            data = self._rest + data
        unpack = _FRAME_HEADER.unpack_from
        end = len(data)
        at = 0
        while end - at >= 9:
            high, low, kind, flags, stream_id = unpack(data, at)
            start = at + 9
            stop = start + (high << 16 | low)
            if stop > end:
                break
            at = stop
            if kind == _DATA:
                # The usual frame: one whole gRPC message (flag byte, length, message).
                if (
                    not flags & _PADDED
                    and stream_id not in self._partial
                    and int.from_bytes(data[start + 1 : start + 5], "big") == stop - start - 5
                ):
                    self.on_message(self.streams[stream_id >> 1], data[start + 5 : stop], now)
                else:
                    self._data(stream_id, flags, data[start:stop], now)
            elif kind == _SETTINGS and not flags & _ACK:
                self._transport.write(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                self._transport.write(_frame(_PING, _ACK, 0, data[start:stop]))
            elif (kind == _HEADERS and flags & _END_STREAM) or kind == _RST_STREAM:
                self.failures.append(f"stream {stream_id} ended by the server")
            elif kind == _GOAWAY:
                self.failures.append("GOAWAY")
        self._rest = data[at:]

    def _data(self, stream_id: int, flags: int, payload: bytes, now: float) -> None:
        """Messages split over frames, or several in one, or padding."""
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        payload = self._partial.pop(stream_id, b"") + payload
        at = 0
        while len(payload) - at >= 5:
            size = int.from_bytes(payload[at + 1 : at + 5], "big")
            if len(payload) - at - 5 < size:
                break
            self.on_message(self.streams[stream_id >> 1], payload[at + 5 : at + 5 + size], now)
            at += 5 + size
        if at < len(payload):
            self._partial[stream_id] = payload[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.failures.append(f"connection lost: {exc}")


def _same(protocol: RawWatchConnection) -> RawWatchConnection:
    return protocol


async def watch_many_raw(address: str, event_id: str, count: int) -> None:
    """Child, ``--client raw``: as :func:`watch_many`, over :class:`RawWatchConnection`.
    Messages are kept as bytes while they arrive and decoded after the run (only those that
    come after the last change is known are decoded at once, to tell when all arrived)."""
    from slotlock.v1 import availability_pb2

    parse = availability_pb2.EventAvailability.FromString
    request = availability_pb2.WatchAvailabilityRequest(event_ids=[event_id]).SerializeToString()
    received: list[list[tuple[bytes, float]]] = [[] for _ in range(count)]
    waiting = [count]
    all_first = asyncio.Event()
    target = [0]
    finished = [False] * count
    unfinished = [count]
    done = asyncio.Event()

    def on_message(number: int, payload: bytes, now: float) -> None:
        mine = received[number]
        mine.append((payload, now))
        if len(mine) == 1:
            waiting[0] -= 1
            if not waiting[0]:
                all_first.set()
        if target[0] and not finished[number]:
            check(number, payload)

    def check(number: int, payload: bytes) -> None:
        if parse(payload).pending >= target[0]:
            finished[number] = True
            unfinished[0] -= 1
            if not unfinished[0]:
                done.set()

    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    connections: list[RawWatchConnection] = []
    for start in range(0, count, WATCHERS_PER_CHANNEL):
        streams = list(range(start, min(count, start + WATCHERS_PER_CHANNEL)))
        protocol = RawWatchConnection(address, request, streams, on_message)
        await loop.create_connection(functools.partial(_same, protocol), host, int(port))
        connections.append(protocol)
    try:
        await asyncio.wait_for(all_first.wait(), 120)
    except TimeoutError:
        failures = [f for c in connections for f in c.failures]
        ready = sum(1 for mine in received if mine)
        print(f"only {ready} of {count} watchers got a first message; {failures[:5]}", flush=True)
        return
    for mine in received:
        mine.clear()
    print("READY", flush=True)

    line = await loop.run_in_executor(None, sys.stdin.readline)
    times: list[float] = json.loads(line)["times"]
    target[0] = len(times)
    for number, mine in enumerate(received):
        if mine:
            check(number, mine[-1][0])
    if unfinished[0]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
    seen = [[(parse(payload).pending, at) for payload, at in mine] for mine in received]
    report_deliveries(seen, times, [f for c in connections for f in c.failures])


# -- drivers: what makes the changes ---------------------------------------------------------


class PublishDriver:
    """Publishes EventChange messages straight to JetStream, as the outbox relay would."""

    name = "publish (EventChange straight to JetStream, as the relay would)"

    def __init__(self, nats_url: str, feed: Feed) -> None:
        self.nats_url = nats_url
        self.feed = feed
        self.event_id = str(uuid.uuid4())
        self.change_id = 0
        self._nc: Any = None
        self._js: Any = None

    async def setup(self) -> str:
        import nats

        self._nc = await nats.connect(self.nats_url)
        self._js = self._nc.jetstream()
        await self.feed.ensure_stream(self._js)
        await self._publish(0)
        return self.event_id

    async def _publish(self, pending: int) -> None:
        self.change_id += 1
        event = builders.event_snapshot(
            self.event_id,
            code="BENCH-FANOUT",
            capacity=CAPACITY,
            pending=pending,
            version=self.change_id,
        )
        change = builders.event_change(event, self.change_id)
        await self._js.publish(
            self.feed.subject_for(self.event_id),
            change.SerializeToString(),
            headers={"Nats-Msg-Id": f"fanout-{self.feed.stream}-{self.change_id}"},
        )

    async def change(self, k: int) -> float:
        changed_at = time.monotonic()
        await self._publish(k)
        return changed_at

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


class ReservationDriver:
    """Real holds through the reservation service: CreateHold, one seat each."""

    name = "reservation (CreateHold through the reservation service)"

    def __init__(self, address: str) -> None:
        self.address = address
        self.event_id = ""
        self._channel: Any = None
        self._stub: Any = None

    async def setup(self) -> str:
        import grpc

        from slotlock.v1 import reservation_pb2_grpc

        self._channel = grpc.aio.insecure_channel(self.address)
        self._stub = reservation_pb2_grpc.ReservationServiceStub(self._channel)
        event = await self._stub.UpsertEvent(
            builders.event_request(
                f"BENCH-{uuid.uuid4().hex[:8]}",
                CAPACITY,
                title="Dinner in the dark",
                local_date="2026-12-24",
                experience_only_price=None,
            )
        )
        self.event_id = event.id
        return self.event_id

    async def change(self, k: int) -> float:
        from slotlock.v1 import reservation_pb2

        await self._stub.CreateHold(
            reservation_pb2.CreateHoldRequest(
                event_id=self.event_id,
                quantity=1,
                customer_ref=f"bench-{k}",
                idempotency_key=uuid.uuid4().hex,
            )
        )
        return time.monotonic()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)


# -- the run ---------------------------------------------------------------------------------


def deliveries(
    seen: list[list[tuple[int, float]]], times: list[float], failures: list[str]
) -> dict[str, Any]:
    """Each receiver's latency for each change: change k (made at ``times[k-1]``) reached a
    receiver when it first saw a pending count of k or more; ``seen`` holds each receiver's
    (pending, time seen) in order. Also, per change, the first and the last receiver's latency
    (the path to the service and through it, then how long one sweep over the receivers took).
    Shared by the watcher and browser client processes (bench fanout and bench sse)."""
    latencies: list[float] = []
    first = [math.inf] * len(times)
    last = [0.0] * len(times)
    delivered = 0
    for mine in seen:
        position = 0
        for k, changed_at in enumerate(times, start=1):
            while position < len(mine) and mine[position][0] < k:
                position += 1
            if position == len(mine):
                break
            delivered += 1
            latency = round(max(0.0, mine[position][1] - changed_at) * 1000, 3)
            latencies.append(latency)
            first[k - 1] = min(first[k - 1], latency)
            last[k - 1] = max(last[k - 1], latency)
    return {
        "latencies_ms": latencies,
        "first_ms": [None if math.isinf(x) else x for x in first],
        "last_ms": last,
        "delivered": delivered,
        "failures": len(failures),
        "failure_kinds": sorted(set(failures))[:5],
    }


def report_deliveries(
    seen: list[list[tuple[int, float]]], times: list[float], failures: list[str]
) -> None:
    """Print :func:`deliveries` as one JSON line (a client process's answer to the parent)."""
    print(json.dumps(deliveries(seen, times, failures)), flush=True)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def start_clients(
    address: str,
    event_id: str,
    watchers: int,
    clients: int,
    processes: list[Any],
    cpus: list[int] | None = None,
    kind: str = "raw",
) -> None:
    """Start the watcher processes (into ``processes``, so the caller can always stop them), on
    ``cpus`` when given."""
    import psutil

    share = [watchers // clients + (1 if n < watchers % clients else 0) for n in range(clients)]
    for count in share:
        if count == 0:
            continue
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slotlock_cli.bench.fanout",
                    "--child",
                    address,
                    event_id,
                    str(count),
                    kind,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        if cpus:
            psutil.Process(processes[-1].pid).cpu_affinity(cpus)
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"a watcher client failed to start (said {line!r})")


def run(args: argparse.Namespace) -> int:
    import psutil

    feed = Feed(stream=f"BENCH_FANOUT_{uuid.uuid4().hex[:8]}", subject_prefix="bench.fanout")
    want_db = args.driver != "publish"
    # Logs survive only under --log-dir; everything else goes with the system's temporary folder.
    system = System(
        database_url=args.database_url,
        nats_url=args.nats_url,
        postgres=want_db,
        feed=feed,
        log_dir=args.log_dir,
        roles=(),
        hold_ttl_s=600,
        log_level="WARNING",
        tls=False,
        extra_env=BENCH_ENV,  # load clients call without a token (see bench.holds)
    )
    clients: list[Any] = []
    loop = asyncio.new_event_loop()
    driver: PublishDriver | ReservationDriver | None = None
    try:
        system.start_stack()
        if want_db:
            try:
                system.start_service(system.add_service("reservation"))
                driver = ReservationDriver(system.reservation_addr)
            except Exception as error:
                if args.driver == "reservation":
                    raise
                print(f"reservation service not usable ({error}); publishing EventChange instead")
        if driver is None:
            driver = PublishDriver(system.stack.nats_url, feed)
        event_id = loop.run_until_complete(driver.setup())
        print(f"driver: {driver.name}")

        availability = system.add_service(
            "availability",
            env={
                "SLOTLOCK_MAX_WATCHERS": str(max(10_000, args.watchers * 2)),
                "SLOTLOCK_WORKERS": str(args.workers),
            },
        )
        system.start_service(availability)
        address = system.service(availability).address
        service = ServiceTree(system.service(availability).process.pid, args.workers)
        # Every worker must know the event (any may get a watcher): a new connection per probe
        # lands on a worker the kernel picks; a few per worker reach them all.
        for _ in range(1 if args.workers == 1 else 4 * args.workers):
            loop.run_until_complete(wait_known(address, event_id))
        rss_before = service.rss()

        count = args.clients or max(1, min(4, math.ceil(args.watchers / 1000)))
        cpus = sorted(psutil.Process().cpu_affinity() or [])
        pinned = args.pin and len(cpus) >= 2
        if pinned:
            # The clients' CPU would otherwise be taken from the service being measured (at 5,000
            # watchers they need more than a core of a 2-core box).
            for process in service.processes:
                process.cpu_affinity(cpus[-1:])
            print(f"availability service pinned to CPU {cpus[-1]}; watcher clients to {cpus[:-1]}")
        started = time.monotonic()
        start_clients(
            address,
            event_id,
            args.watchers,
            count,
            clients,
            cpus[:-1] if pinned else None,
            args.client,
        )
        print(
            f"{args.watchers} watchers connected in {count} client process(es) "
            f"in {time.monotonic() - started:.1f}s"
        )
        if args.workers > 1:
            spread = "/".join(str(n) for n in service.connections(address))
            print(f"{args.workers} service workers; client connections per worker: {spread}")
        rss_watching = service.rss()

        cpu_before = service.cpu_s()
        machine = MachineLoad(_postmaster_pid(system))
        client_cpu_before = [psutil.Process(c.pid).cpu_times() for c in clients]
        times: list[float] = []
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        for k in range(1, args.updates + 1):
            times.append(loop.run_until_complete(driver.change(k)))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        rss_after = service.rss()
        service_cpu = service.cpu_s() - cpu_before
        ours, others, wall = machine.stop()
        client_cpu = sum(
            after.user + after.system - before.user - before.system
            for before, after in zip(
                client_cpu_before,
                [psutil.Process(c.pid).cpu_times() for c in clients],
                strict=True,
            )
        )
        share = service_cpu / (args.updates / args.rate)
        per_delivery_us = service_cpu / max(1, args.updates * args.watchers) * 1e6
        print(
            f"CPU while changing: service {service_cpu:.2f}s ({share:.0%} of a core), "
            f"watcher clients {client_cpu:.2f}s; service {per_delivery_us:.1f} us per delivery"
        )

        cores = os.cpu_count() or 1
        print(
            f"machine while changing ({wall:.1f} s, {cores} cores): this benchmark's processes "
            f"(services, watcher clients, Postgres, NATS) {ours:.2f} CPU-s, other processes "
            f"{others:.2f} CPU-s"
            + (
                f" -- other load took {others / wall / cores:.0%} of the machine: latencies are "
                "inflated"
                if others > 0.15 * wall * cores
                else ""
            )
        )

        latencies: list[float] = []
        delivered = 0
        payload = json.dumps({"times": times}) + "\n"
        for client in clients:
            client.stdin.write(payload)
            client.stdin.flush()
        failures = 0
        kinds: set[str] = set()
        first = [math.inf] * len(times)
        last = [0.0] * len(times)
        for client in clients:
            result = json.loads(client.stdout.readline())
            latencies += result["latencies_ms"]
            delivered += result["delivered"]
            failures += result["failures"]
            kinds.update(result["failure_kinds"])
            for k, (low, high) in enumerate(
                zip(result["first_ms"], result["last_ms"], strict=True)
            ):
                first[k] = min(first[k], math.inf if low is None else low)
                last[k] = max(last[k], high)
        if failures:
            print(f"watch streams that failed and were reopened: {failures} {sorted(kinds)}")
        latencies.sort()
        expected = args.watchers * args.updates
        figures = {
            "watchers": args.watchers,
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(latencies[-1], 2) if latencies else None,
            "delivered_ratio": round(delivered / expected, 4) if expected else None,
            "rss_mb": round(rss_after / 2**20, 1),
        }
        print(f"updates: {args.updates} at {args.rate:g}/s; samples: {len(latencies)}")
        reached = sorted(x for x in first if not math.isinf(x))
        sweeps = sorted(high - low for low, high in zip(first, last, strict=True) if low <= high)
        if reached:
            print(
                "where the time goes, per change: to the first watcher (reservation service, "
                f"relay, NATS, the availability service's feed) p50 {percentile(reached, 0.5):.1f}"
                f" / p99 {percentile(reached, 0.99):.1f} ms; from the first watcher to the last "
                f"(the sweep over every stream) p50 {percentile(sweeps, 0.5):.1f} / p99 "
                f"{percentile(sweeps, 0.99):.1f} ms"
            )
        if latencies:
            print(f"mean latency {statistics.fmean(latencies):.2f} ms")
        print(
            f"service RSS: {rss_before / 2**20:.1f} MB before watchers, "
            f"{rss_watching / 2**20:.1f} MB with them idle, {rss_after / 2**20:.1f} MB after; "
            f"per watcher ~{(rss_watching - rss_before) / max(1, args.watchers) / 1024:.1f} KB"
        )
        figures["per_watcher_kb"] = round(
            (rss_watching - rss_before) / max(1, args.watchers) / 1024, 1
        )
        figures["driver"] = "reservation" if isinstance(driver, ReservationDriver) else "publish"
        figures["workers"] = args.workers
        figures["other_cpu_s"] = round(others, 2)
        if reached:
            figures["first_p99_ms"] = round(percentile(reached, 0.99), 2)
            figures["sweep_p99_ms"] = round(percentile(sweeps, 0.99), 2)
        figures["pinned"] = pinned
        figures["client"] = args.client
        print(json.dumps(figures))
        return 0
    finally:
        for client in clients:
            client.kill()
            client.wait()
        if driver is not None:
            loop.run_until_complete(driver.close())
        loop.close()
        system.stop()


class ServiceTree:
    """The availability replica: its process and, with workers, their processes (CPU, memory
    and connections are summed or listed over the workers; the parent only waits)."""

    def __init__(self, pid: int, workers: int, within: float = 30.0) -> None:
        import psutil

        self.parent = psutil.Process(pid)
        deadline = time.monotonic() + within
        self.workers = [self.parent]
        while workers > 1:  # the workers name themselves once started (not the tracker)
            self.workers = [
                child for child in self.parent.children() if "worker" in " ".join(child.cmdline())
            ]
            if len(self.workers) >= workers or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    @property
    def processes(self) -> list[Any]:
        return list({p.pid: p for p in (self.parent, *self.workers)}.values())

    def rss(self) -> int:
        return sum(int(process.memory_info().rss) for process in self.processes)

    def cpu_s(self) -> float:
        return sum(sum(process.cpu_times()[:2]) for process in self.processes)

    def connections(self, address: str) -> list[int]:
        """Established client connections of each worker on the service's port."""
        port = int(address.rsplit(":", 1)[1])
        return [
            sum(
                1
                for connection in process.net_connections("tcp")
                if connection.status == "ESTABLISHED" and connection.laddr.port == port
            )
            for process in self.workers
        ]


async def wait_known(address: str, event_id: str, within: float = 30.0) -> None:
    """Until the availability service knows the bench event (it came through the feed)."""
    import grpc

    from slotlock.v1 import availability_pb2, availability_pb2_grpc

    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub = availability_pb2_grpc.AvailabilityServiceStub(channel)
        while True:
            try:
                await stub.GetEventAvailability(
                    availability_pb2.GetEventAvailabilityRequest(event_id=event_id)
                )
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child = watch_many_raw if sys.argv[5] == "raw" else watch_many
        asyncio.run(child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
