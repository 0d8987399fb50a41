"""`slotlock bench expiry`: many short holds; the lag from each hold's expires_at to its
HOLD_EXPIRED change arriving on the JetStream feed (released and published).

Holds are offered at ``--holds / --spread`` per second; when the client could not keep that pace
(every CreateHold is awaited by the time the last one is sent) it says so, with the rate it did
offer, since the lag then describes a gentler load than the one asked for.

Last line JSON: {"lag_p50_ms": ..., "lag_p99_ms": ..., "offered_per_s": ..., "requested_per_s": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC
from typing import Any

import grpc
import nats

from slotlock.feed import Feed
from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2, reservation_pb2_grpc
from slotlock_cli.bench.holds import bench_system, create_hot_event


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "expiry", help="lag from expires_at to the release being published"
    )
    parser.add_argument("--holds", type=int, default=2000, help="holds to create")
    parser.add_argument("--ttl", type=float, default=2.0, help="hold TTL in seconds")
    parser.add_argument("--spread", type=float, default=5.0, help="seconds to create them over")
    parser.add_argument("--events", type=int, default=20, help="events the holds spread over")
    parser.add_argument("--database-url", help="a real PostgreSQL server instead of embedded")
    parser.add_argument("--nats-url", help="a real NATS server instead of embedded")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    feed = Feed(stream="BENCH_EXPIRY", subject_prefix="bench.expiry")
    with bench_system(args, feed, hold_ttl_s=args.ttl) as system:
        events = [create_hot_event(system, f"BENCH-EXP-{i}") for i in range(args.events)]
        lags, offered_s = asyncio.run(
            measure(system.reservation_addr, system.stack.nats_url, feed, events, args)
        )
    requested = args.holds / args.spread
    offered = args.holds / offered_s if offered_s > 0 else 0.0
    print(
        f"offered {args.holds} holds in {offered_s:.2f} s ({offered:,.0f}/s; "
        f"requested {requested:,.0f}/s over {args.spread:.1f} s)"
    )
    if offered < requested * 0.95:
        print(
            f"WARNING: the requested rate was NOT offered: {offered:,.0f}/s of {requested:,.0f}/s "
            "(the client or the service could not keep the pace); the lag below is for the "
            "gentler load"
        )
    lags.sort()
    p50 = statistics.median(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(
        f"{len(lags)} holds expired; lag from expires_at to the release on the feed: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lags[-1]:.1f} ms"
    )
    print(
        json.dumps(
            {
                "lag_p50_ms": round(p50, 2),
                "lag_p99_ms": round(p99, 2),
                "offered_per_s": round(offered, 1),
                "requested_per_s": round(requested, 1),
            }
        )
    )
    return 0


async def measure(
    address: str, nats_url: str, feed: Feed, events: list[str], args: argparse.Namespace
) -> tuple[list[float], float]:
    """Lags in ms, and the seconds it took to offer every hold (sent and answered)."""
    expires: dict[str, float] = {}
    released: dict[str, float] = {}
    done = asyncio.Event()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await feed.ensure_stream(js)

    async def on_change(msg: Any) -> None:
        change = changes_pb2.EventChange.FromString(msg.data)
        if change.type == changes_pb2.CHANGE_TYPE_HOLD_EXPIRED:
            released[change.reservation.id] = time.time()
            if len(released) >= args.holds:
                done.set()

    from nats.js.api import DeliverPolicy

    sub = await js.subscribe(
        feed.all_subjects, cb=on_change, deliver_policy=DeliverPolicy.NEW, ordered_consumer=True
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reservation_pb2_grpc.ReservationServiceStub(channel)
        gap = args.spread / args.holds

        async def one(i: int) -> None:
            reply = await stub.CreateHold(
                reservation_pb2.CreateHoldRequest(
                    event_id=events[i % len(events)],
                    quantity=1,
                    ticket_type=catalog_pb2.TICKET_TYPE_DINNER,
                )
            )
            expires[reply.reservation.id] = reply.reservation.expires_at.ToDatetime(
                tzinfo=UTC
            ).timestamp()

        tasks = []
        start = time.monotonic()
        for i in range(args.holds):
            tasks.append(asyncio.create_task(one(i)))
            delay = start + (i + 1) * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
        offered_s = time.monotonic() - start
        try:
            await asyncio.wait_for(done.wait(), timeout=args.ttl + 60)
        except TimeoutError:
            missing = len(set(expires) - set(released))
            print(f"warning: {missing} of {len(expires)} expiries not seen on the feed in time")
    await sub.unsubscribe()
    await nc.close()
    return [(released[r] - expires[r]) * 1000 for r in expires if r in released], offered_s
