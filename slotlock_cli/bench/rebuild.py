"""`slotlock bench rebuild`: how long a cold availability replica takes to be SERVING when the
feed already holds N events (plus superseded versions that last-per-subject must skip).

Only NATS is needed, so without ``--nats-url`` an embedded nats-server is started (no Postgres).
Prints figures; the last line is JSON ``{"events": N, "seconds": ...}`` where ``seconds`` runs
from spawning the process to health SERVING (interpreter start included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from typing import Any

from slotlock.feed import Feed
from slotlock_cli import builders
from slotlock_cli.system import System


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "rebuild", help="time a cold availability start over N events in the feed"
    )
    parser.add_argument("--events", type=int, default=10_000, help="distinct events (10000)")
    parser.add_argument(
        "--superseded",
        type=int,
        default=3,
        help="older versions published before the last one, for every 10th event (3)",
    )
    parser.add_argument("--nats-url", default=None, help="use this NATS instead of an embedded one")
    parser.add_argument("--runs", type=int, default=3, help="cold starts to time (3; best shown)")
    parser.set_defaults(handler=run)


def change_bytes(event_id: str, version: int, change_id: int) -> bytes:
    event = builders.event_snapshot(
        event_id,
        capacity=40,
        pending=version % 7,
        version=version,
        time_zone="Asia/Ho_Chi_Minh",
        dinner_price=builders.money(1_500_000),
    )
    return builders.event_change(event, change_id).SerializeToString()


async def fill_feed(nats_url: str, feed: Feed, events: int, superseded: int) -> int:
    """Publish the changes, pipelined (acks awaited in windows); returns messages published."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=30)
        await feed.ensure_stream(js)
        change_id = 0
        pending: list[Any] = []
        for number in range(events):
            event_id = str(uuid.uuid4())
            last = 1 + (superseded if number % 10 == 0 else 0)
            for version in range(1, last + 1):
                change_id += 1
                pending.append(
                    js.publish(
                        feed.subject_for(event_id),
                        change_bytes(event_id, version, change_id),
                        headers={"Nats-Msg-Id": f"bench-{feed.stream}-{change_id}"},
                    )
                )
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
        await asyncio.gather(*pending)
        return change_id
    finally:
        await nc.close()


def time_cold_start(system: System) -> tuple[float, float | None, int | None]:
    """Start a new availability replica and time it to SERVING; then read the rebuild time the
    service logged."""
    name = system.add_service("availability")
    started = time.monotonic()
    try:
        system.start_service(name, timeout=120)
        seconds = time.monotonic() - started
    finally:
        system.stop_service(name)
    log_path = system.service(name).process.log_path
    assert log_path is not None
    found = re.findall(r"view rebuilt: (\d+) events in ([0-9.]+)s", log_path.read_text())
    if not found:
        return seconds, None, None
    return seconds, float(found[-1][1]), int(found[-1][0])


def run(args: argparse.Namespace) -> int:
    feed = Feed(stream=f"BENCH_REBUILD_{uuid.uuid4().hex[:8]}", subject_prefix="bench.rebuild")
    with System(nats_url=args.nats_url, postgres=False, feed=feed, roles=()) as system:
        nats_url = system.stack.nats_url
        started = time.monotonic()
        published = asyncio.run(fill_feed(nats_url, feed, args.events, args.superseded))
        print(
            f"published {published} changes for {args.events} events "
            f"in {time.monotonic() - started:.2f}s (stream {feed.stream})"
        )
        results = []
        for attempt in range(1, args.runs + 1):
            seconds, rebuild, known = time_cold_start(system)
            results.append((seconds, rebuild))
            inner = f"{rebuild:.3f}s" if rebuild is not None else "n/a"
            print(
                f"run {attempt}: spawn -> SERVING {seconds:.3f}s "
                f"(of which feed rebuild {inner} for {known} events, per the service log)"
            )
        best, best_rebuild = min(results, key=lambda result: result[0])
        print(
            json.dumps(
                {
                    "events": args.events,
                    "messages": published,
                    "seconds": round(best, 3),
                    "rebuild_seconds": best_rebuild,
                }
            )
        )
    return 0
