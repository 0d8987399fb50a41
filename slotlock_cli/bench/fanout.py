"""`slotlock bench fanout`: propagation latency from a change to N concurrent watchers.

The availability service runs as its own process; the watchers live in separate client processes
so the measured service does not share an interpreter with them (on a small box they still share
the CPU: the figures are for everything on one machine). Changes are real ``CreateHold`` calls
through the reservation service (``--driver reservation``, the default when it starts), or
``EventChange`` messages published straight to JetStream as the outbox relay would
(``--driver publish``; also the fallback, which the output says).

Update k makes the event's ``pending`` equal k, so a watcher has "delivered" update k once it has
seen pending >= k (conflation to a newer state counts); its latency is that moment minus the
change time (``CreateHold`` return, or just before the JetStream publish). Clocks are
CLOCK_MONOTONIC, shared by all processes of the machine.

Prints figures; the last line is JSON: watchers, p50_ms, p99_ms, max_ms, delivered_ratio, rss_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from slotlock.feed import Feed
from slotlock_cli import builders
from slotlock_cli.bench.holds import BENCH_ENV
from slotlock_cli.system import System

CAPACITY = 1_000_000
WATCHERS_PER_CHANNEL = 200


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
        "--driver",
        choices=("auto", "reservation", "publish"),
        default="auto",
        help="make changes with CreateHold, or by publishing EventChange (auto: try CreateHold)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="keep the watcher clients off the availability service's core: the service on the "
        "last CPU, the clients on the others (needs 2+ CPUs; on 2 CPUs the clients, ~10 us of "
        "CPU per message received, then fall behind at 5,000 watchers and their own lag is "
        "what gets measured)",
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


def report_deliveries(
    seen: list[list[tuple[int, float]]], times: list[float], failures: list[str]
) -> None:
    """Print :func:`deliveries` as one JSON line (a client process's answer to the parent)."""
    print(json.dumps(deliveries(seen, times, failures)), flush=True)


def deliveries(
    seen: list[list[tuple[int, float]]], times: list[float], failures: list[str]
) -> dict[str, Any]:
    """Each receiver's latency for each change: change k (made at ``times[k-1]``) reached a
    receiver when it first saw a pending count of k or more; ``seen`` holds each receiver's
    (pending, time seen) in order. Shared by the watcher and browser client processes (bench
    fanout and bench sse)."""
    latencies: list[float] = []
    delivered = 0
    for mine in seen:
        position = 0
        for k, changed_at in enumerate(times, start=1):
            while position < len(mine) and mine[position][0] < k:
                position += 1
            if position == len(mine):
                break
            delivered += 1
            latencies.append(round(max(0.0, mine[position][1] - changed_at) * 1000, 3))
    return {
        "latencies_ms": latencies,
        "delivered": delivered,
        "failures": len(failures),
        "failure_kinds": sorted(set(failures))[:5],
    }


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
            env={"SLOTLOCK_MAX_WATCHERS": str(max(10_000, args.watchers * 2))},
        )
        system.start_service(availability)
        address = system.service(availability).address
        loop.run_until_complete(wait_known(address, event_id))
        service = psutil.Process(system.service(availability).process.pid)
        rss_before = service.memory_info().rss

        count = args.clients or max(1, min(4, math.ceil(args.watchers / 1000)))
        cpus = sorted(service.cpu_affinity() or [])
        pinned = args.pin and len(cpus) >= 2
        if pinned:
            # The clients' CPU would otherwise be taken from the service being measured (at 5,000
            # watchers they need more than a core of a 2-core box).
            service.cpu_affinity(cpus[-1:])
            print(f"availability service pinned to CPU {cpus[-1]}; watcher clients to {cpus[:-1]}")
        started = time.monotonic()
        start_clients(
            address, event_id, args.watchers, count, clients, cpus[:-1] if pinned else None
        )
        print(
            f"{args.watchers} watchers connected in {count} client process(es) "
            f"in {time.monotonic() - started:.1f}s"
        )
        rss_watching = service.memory_info().rss

        cpu_before = service.cpu_times()
        client_cpu_before = [psutil.Process(c.pid).cpu_times() for c in clients]
        times: list[float] = []
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        for k in range(1, args.updates + 1):
            times.append(loop.run_until_complete(driver.change(k)))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        rss_after = service.memory_info().rss
        cpu_after = service.cpu_times()
        service_cpu = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
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

        latencies: list[float] = []
        delivered = 0
        payload = json.dumps({"times": times}) + "\n"
        for client in clients:
            client.stdin.write(payload)
            client.stdin.flush()
        failures = 0
        kinds: set[str] = set()
        for client in clients:
            result = json.loads(client.stdout.readline())
            latencies += result["latencies_ms"]
            delivered += result["delivered"]
            failures += result["failures"]
            kinds.update(result["failure_kinds"])
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
        figures["pinned"] = pinned
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
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        asyncio.run(watch_many(sys.argv[2], sys.argv[3], int(sys.argv[4])))
