"""An idle replica is idle: after writes, a two-worker reservation service (one active outbox
relay, one standing by) uses next to no CPU. The standby relay used to poll its lock on every
wake-up and, once a commit had woken it, spun a full core forever."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from slotlock.feed import Feed
from slotlock.v1 import reservation_pb2, reservation_pb2_grpc
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.system import System

QUIET_S = 3.0
# Generous: a spinning standby burns ~1 CPU-second per second; an idle replica's relay polls
# once a second and its expirer every few seconds.
MAX_CPU_S = 0.5


@pytest.fixture
def replica(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[System]:
    with System(
        stack,
        feed,
        log_dir=tmp_path,
        roles=("reservation",),
        ports={"reservation": free_port()},  # several workers share a fixed port
        extra_env={"SLOTLOCK_WORKERS": "2"},
    ) as running:
        yield running


def cpu_seconds(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def test_an_idle_two_worker_replica_uses_next_to_no_cpu(replica: System) -> None:
    event = replica.seed_event("IDLE-CPU", capacity=1000)
    # Several connections, so that both workers (SO_REUSEPORT) commit and both relays wake.
    for _ in range(4):
        stub = reservation_pb2_grpc.ReservationServiceStub(replica.channel("reservation"))
        for _ in range(5):
            stub.CreateHold(
                reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1), timeout=10
            )
    time.sleep(1.5)  # the relay publishes; the writes' after-effects settle
    root = psutil.Process(replica.service("reservation").process.pid)
    assert len(root.children(recursive=True)) >= 2, "expected two worker processes"
    before = cpu_seconds(root)
    time.sleep(QUIET_S)
    used = cpu_seconds(root) - before
    assert used < MAX_CPU_S, f"an idle replica used {used:.2f} CPU-s in {QUIET_S:.0f} s"
