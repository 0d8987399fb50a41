"""`slotlock drill postgres|nats|nats-wipe`: take a dependency away from a running system (the
services as processes, on embedded Postgres and NATS), put it back, and print how the services
behaved and how long recovery took, as an operator would measure it.

- ``postgres``: Postgres stopped for ``--down`` seconds while a client places a hold every
  ``--every`` seconds (deadline ``--deadline``). Figures: how soon the reservation service said
  NOT_SERVING, how fast calls heard UNAVAILABLE, the codes seen, and how soon after Postgres
  returned it was SERVING and the first hold succeeded.
- ``nats``: NATS stopped for ``--down`` seconds, holds going on. Figures: how soon the
  availability service said NOT_SERVING, how soon after NATS returned it was SERVING again and
  its view matched the database (nothing lost).
- ``nats-wipe``: NATS stopped, its store deleted, started again, with no writes: how soon a quiet
  event's state was back on the (recreated) stream.

Figures are printed one per line, then all of them as JSON on the last line. No assertions: the
test suite asserts the behaviour (tests/integration/test_outages.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slotlock.feed import Feed
from slotlock.v1 import (
    availability_pb2,
    availability_pb2_grpc,
    changes_pb2,
    reservation_pb2,
    reservation_pb2_grpc,
)
from slotlock_cli.system import System

SERVING = health_pb2.HealthCheckResponse.SERVING
KINDS = ("postgres", "nats", "nats-wipe")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "drill", help="take Postgres or NATS away and back; print recovery figures (last line JSON)"
    )
    parser.add_argument("kind", choices=KINDS, help="what to take away")
    parser.add_argument("--down", type=float, default=5.0, help="seconds it stays away")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between holds")
    parser.add_argument("--deadline", type=float, default=5.0, help="each hold's deadline (s)")
    parser.set_defaults(handler=run)


@dataclass
class Timeline:
    """What the drill saw, on the monotonic clock: each hold (start, end, code) and every
    readiness change of each service (time, serving)."""

    holds: list[tuple[float, float, str]] = field(default_factory=list)
    health: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def first_health(self, service: str, serving: bool, after: float) -> float | None:
        for at, value in self.health.get(service, []):
            if at >= after and value == serving:
                return at - after
        return None


def run(args: argparse.Namespace) -> int:
    feed = Feed(stream="DRILL", subject_prefix="drill.event")
    with System(feed=feed) as system:
        event = system.seed_event("DRILL", capacity=1_000_000)
        timeline = Timeline()
        reservations = reservation_pb2_grpc.ReservationServiceStub(system.channel("reservation"))
        availability = availability_pb2_grpc.AvailabilityServiceStub(system.channel("availability"))
        watchers = [
            threading.Thread(target=_follow_health, args=(system, name, timeline), daemon=True)
            for name in ("reservation", "availability")
        ]
        if args.kind != "nats-wipe":  # a wiped store is measured without writes
            watchers.append(
                threading.Thread(
                    target=_place_holds,
                    args=(reservations, event.id, args.every, args.deadline, timeline),
                    daemon=True,
                )
            )
        for thread in watchers:
            thread.start()
        time.sleep(1.0)  # a steady state first
        if args.kind == "postgres":
            figures = _drill_postgres(system, args.down, timeline)
        elif args.kind == "nats":
            figures = _drill_nats(system, args.down, timeline, reservations, availability, event.id)
        else:
            figures = _drill_nats_wipe(system, feed, reservations, event.id)
        timeline.stop.set()
        for thread in watchers:
            thread.join(args.deadline + 2)
    figures = {"drill": args.kind, "down_s": args.down, **figures}
    for name, value in figures.items():
        print(f"{name:>36}: {value}")
    print(json.dumps(figures))
    return 0


def _drill_postgres(system: System, down_s: float, timeline: Timeline) -> dict[str, Any]:
    postgres = system.stack.postgres
    assert postgres is not None, "the postgres drill needs the embedded Postgres"
    stopped = time.monotonic()
    postgres.stop()
    time.sleep(down_s)
    postgres.start()
    started = time.monotonic()
    _wait(lambda: _first_ok_hold(timeline, started) is not None, 30)
    during = [h for h in timeline.holds if stopped <= h[0] and h[1] <= started]
    unavailable = [end - start for start, end, code in during if code == "UNAVAILABLE"]
    return {
        "not_serving_after_s": _round(timeline.first_health("reservation", False, stopped)),
        "codes_during_outage": dict(Counter(code for _, _, code in during)),
        "unavailable_answer_p50_s": _round(statistics.median(unavailable) if unavailable else None),
        "unavailable_answer_max_s": _round(max(unavailable) if unavailable else None),
        "serving_after_back_s": _round(timeline.first_health("reservation", True, started)),
        "first_hold_after_back_s": _round(_first_ok_hold(timeline, started)),
    }


def _drill_nats(
    system: System,
    down_s: float,
    timeline: Timeline,
    reservations: Any,
    availability: Any,
    event_id: str,
) -> dict[str, Any]:
    broker = system.stack.nats
    assert broker is not None, "the nats drill needs the embedded NATS"
    stopped = time.monotonic()
    broker.stop()
    time.sleep(down_s)
    broker.start()
    started = time.monotonic()
    _wait(lambda: timeline.first_health("availability", True, started) is not None, 30)
    timeline.stop.set()  # writes stop: the view must now reach the database's state

    def matches() -> bool:
        truth = reservations.GetEvent(reservation_pb2.GetEventRequest(event_id=event_id), timeout=2)
        seen = availability.GetEventAvailability(
            availability_pb2.GetEventAvailabilityRequest(event_id=event_id), timeout=2
        )
        return bool(seen.version == truth.version and seen.pending == truth.pending)

    caught_up = _wait(matches, 30)
    during = [h for h in timeline.holds if stopped <= h[0] and h[1] <= started]
    return {
        "availability_not_serving_after_s": _round(
            timeline.first_health("availability", False, stopped)
        ),
        "hold_codes_during_outage": dict(Counter(code for _, _, code in during)),
        "availability_serving_after_back_s": _round(
            timeline.first_health("availability", True, started)
        ),
        "view_matches_database_after_back_s": _round(
            None if caught_up is None else caught_up - started
        ),
    }


def _drill_nats_wipe(
    system: System, feed: Feed, reservations: Any, event_id: str
) -> dict[str, Any]:
    broker = system.stack.nats
    assert broker is not None, "the nats-wipe drill needs the embedded NATS"
    reservations.CreateHold(
        reservation_pb2.CreateHoldRequest(event_id=event_id, quantity=1, customer_ref="drill"),
        timeout=5,
    )
    version = reservations.GetEvent(
        reservation_pb2.GetEventRequest(event_id=event_id), timeout=5
    ).version
    _wait(lambda: _version_on_feed(broker.url, feed, event_id) >= version, 30)
    broker.stop()
    shutil.rmtree(broker.store_dir)
    broker.start()
    started = time.monotonic()
    back = _wait(lambda: _version_on_feed(broker.url, feed, event_id) >= version, 60)
    return {"quiet_event_back_on_feed_after_s": _round(None if back is None else back - started)}


def _place_holds(
    stub: Any, event_id: str, every_s: float, deadline_s: float, timeline: Timeline
) -> None:
    while not timeline.stop.is_set():
        started = time.monotonic()
        try:
            stub.CreateHold(
                reservation_pb2.CreateHoldRequest(
                    event_id=event_id, quantity=1, customer_ref="drill"
                ),
                timeout=deadline_s,
            )
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        timeline.holds.append((started, time.monotonic(), code))
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def _follow_health(system: System, name: str, timeline: Timeline) -> None:
    stub = health_pb2_grpc.HealthStub(system.channel(name))
    changes = timeline.health.setdefault(name, [])
    while not timeline.stop.is_set():
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            serving = status == SERVING
        except grpc.RpcError:
            serving = False
        if not changes or changes[-1][1] != serving:
            changes.append((time.monotonic(), serving))
        time.sleep(0.05)


def _first_ok_hold(timeline: Timeline, after: float) -> float | None:
    for start, end, code in timeline.holds:
        if start >= after and code == "OK":
            return end - after
    return None


def _version_on_feed(url: str, feed: Feed, event_id: str) -> int:
    async def read() -> int:
        try:
            nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
        except Exception:
            return 0
        try:
            msg = await nc.jetstream(timeout=1).get_last_msg(
                feed.stream, feed.subject_for(event_id)
            )
            return int(changes_pb2.EventChange.FromString(msg.data or b"").event.version)
        except Exception:
            return 0
        finally:
            await nc.close()

    return asyncio.run(read())


def _wait(check: Any, within_s: float) -> float | None:
    """The monotonic time ``check()`` first held (polling), or None after ``within_s``."""
    until = time.monotonic() + within_s
    while time.monotonic() < until:
        try:
            if check():
                return time.monotonic()
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
