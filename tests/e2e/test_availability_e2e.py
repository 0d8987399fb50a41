"""End to end, as operators run it: the reservation and availability services as processes on
the session's Postgres and NATS. Holds made through the reservation service reach availability
watchers within a second; restarts and replicas converge on the reservation service's truth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from slotlock.feed import Feed
from slotlock.v1 import (
    availability_pb2,
    availability_pb2_grpc,
    reservation_pb2,
    reservation_pb2_grpc,
)
from slotlock_cli import builders
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.system import System

HOLD_TTL_S = 1.5


@pytest.fixture
def system(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[System]:
    """The reservation service; each test adds the availability replicas it needs."""
    with System(
        stack, feed, log_dir=tmp_path, hold_ttl_s=HOLD_TTL_S, roles=("reservation",)
    ) as running:
        yield running


def reservation_stub(system: System) -> reservation_pb2_grpc.ReservationServiceStub:
    return reservation_pb2_grpc.ReservationServiceStub(system.channel("reservation"))


def availability_stub(system: System, name: str) -> availability_pb2_grpc.AvailabilityServiceStub:
    return availability_pb2_grpc.AvailabilityServiceStub(system.channel(name))


def add_availability(system: System) -> str:
    name = system.add_service("availability")
    system.start_service(name)
    return name


class Watch:
    """A WatchAvailability stream read on a thread into a list, with a blocking wait."""

    def __init__(self, stub: availability_pb2_grpc.AvailabilityServiceStub, event_id: str) -> None:
        self.messages: list[availability_pb2.EventAvailability] = []
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._call: Any = stub.WatchAvailability(
            availability_pb2.WatchAvailabilityRequest(event_ids=[event_id])
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            self.error = error

    def wait_for(
        self, predicate: Callable[[availability_pb2.EventAvailability], bool], within: float
    ) -> availability_pb2.EventAvailability:
        """The first message from now on (or the latest one) that matches."""
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                if self.messages and predicate(self.messages[-1]):
                    return self.messages[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.messages[-1] if self.messages else None
                    raise AssertionError(
                        f"no matching update within {within}s; last: {last}; error: {self.error}"
                    )
                self._changed.wait(left)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def upsert_event(stub: reservation_pb2_grpc.ReservationServiceStub, capacity: int) -> Any:
    request = builders.event_request(
        f"E2E-{uuid.uuid4().hex[:8]}",
        capacity,
        title="Dinner in the dark",
        experience_only_price=None,
    )
    return stub.UpsertEvent(request, timeout=10)


def wait_known(
    stub: availability_pb2_grpc.AvailabilityServiceStub, event_id: str, *, starting: bool = False
) -> None:
    """A new event reaches the availability view through the feed a moment after UpsertEvent
    returns; until then watching it by id is NOT_FOUND (by design, see the servicer). With
    ``starting``, a view still being rebuilt (UNAVAILABLE, NOT_READY) is waited for too."""
    waiting = {grpc.StatusCode.NOT_FOUND}
    if starting:
        waiting.add(grpc.StatusCode.UNAVAILABLE)
    deadline = time.monotonic() + 10
    while True:
        try:
            stub.GetEventAvailability(
                availability_pb2.GetEventAvailabilityRequest(event_id=event_id), timeout=5
            )
            return
        except grpc.RpcError as error:
            assert error.code() in waiting, error
            assert time.monotonic() < deadline, "the event never reached the availability view"
            time.sleep(0.02)


def hold(stub: reservation_pb2_grpc.ReservationServiceStub, event_id: str, quantity: int) -> Any:
    return stub.CreateHold(
        reservation_pb2.CreateHoldRequest(
            event_id=event_id,
            quantity=quantity,
            customer_ref="e2e",
            idempotency_key=uuid.uuid4().hex,
        ),
        timeout=10,
    )


def counters(message: Any) -> tuple[int, int, int, int]:
    return (message.paid, message.pending, message.available, message.version)


def test_holds_reach_watchers_and_move_the_badge(system: System) -> None:
    replica = add_availability(system)
    reservations = reservation_stub(system)
    event = upsert_event(reservations, capacity=10)
    wait_known(availability_stub(system, replica), event.id)
    watch = Watch(availability_stub(system, replica), event.id)
    try:
        first = watch.wait_for(lambda m: True, within=5)
        assert (first.paid, first.pending, first.available) == (0, 0, 10)
        assert first.badge == availability_pb2.BADGE_AVAILABLE

        # Hold 5: pending +5 within a second; 5 left with someone paying -> ALMOST_FULL.
        started = time.monotonic()
        created = hold(reservations, event.id, 5)
        held = watch.wait_for(lambda m: m.pending == 5, within=1.0)
        assert time.monotonic() - started < 1.0
        assert held.badge == availability_pb2.BADGE_ALMOST_FULL and held.available == 5

        # Pay: paid +5, pending -5; 5 left, nobody paying -> FEW_LEFT.
        reservations.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=created.reservation.id,
                hold_token=created.hold_token,
                payment_reference="PAY-1",
            ),
            timeout=10,
        )
        paid = watch.wait_for(lambda m: m.paid == 5, within=1.0)
        assert (paid.pending, paid.badge) == (0, availability_pb2.BADGE_FEW_LEFT)

        # Release: pending back down.
        released = hold(reservations, event.id, 2)
        watch.wait_for(lambda m: m.pending == 2, within=1.0)
        reservations.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(
                reservation_id=released.reservation.id, hold_token=released.hold_token
            ),
            timeout=10,
        )
        back = watch.wait_for(lambda m: m.pending == 0 and m.version > paid.version + 1, 1.0)
        assert (back.paid, back.available) == (5, 5)

        # Everything left held -> SOLD_OUT; the hold expires -> pending -5, FEW_LEFT again.
        hold(reservations, event.id, 5)
        full = watch.wait_for(lambda m: m.pending == 5, within=1.0)
        assert (full.available, full.badge) == (0, availability_pb2.BADGE_SOLD_OUT)
        expired = watch.wait_for(lambda m: m.pending == 0, within=HOLD_TTL_S + 5)
        assert (expired.paid, expired.available) == (5, 5)
        assert expired.badge == availability_pb2.BADGE_FEW_LEFT

        versions = [m.version for m in watch.messages]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    finally:
        watch.close()


def truth_and_view(system: System, event_id: str, replica: str) -> tuple[Any, Any]:
    truth = reservation_stub(system).GetEvent(
        reservation_pb2.GetEventRequest(event_id=event_id), timeout=10
    )
    view = availability_stub(system, replica).GetEventAvailability(
        availability_pb2.GetEventAvailabilityRequest(event_id=event_id), timeout=10
    )
    return truth, view


def wait_converged(system: System, event_id: str, replica: str, within: float = 10) -> Any:
    deadline = time.monotonic() + within
    while True:
        truth, view = truth_and_view(system, event_id, replica)
        if (truth.paid, truth.pending, truth.version) == (view.paid, view.pending, view.version):
            return view
        assert time.monotonic() < deadline, f"replica {replica}: {view} != {truth}"
        time.sleep(0.05)


class Activity:
    """Holds placed on a thread (some released) until stopped."""

    def __init__(self, system: System, event_id: str) -> None:
        self.stub = reservation_stub(system)
        self.event_id = event_id
        self.done = threading.Event()
        self.made = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            created = hold(self.stub, self.event_id, 1)
            self.made += 1
            if self.made % 3 == 0:
                self.stub.ReleaseHold(
                    reservation_pb2.ReleaseHoldRequest(
                        reservation_id=created.reservation.id, hold_token=created.hold_token
                    ),
                    timeout=10,
                )
            time.sleep(0.01)

    def stop(self) -> int:
        self.done.set()
        self._thread.join(15)
        return self.made


def test_restart_during_activity_converges_on_the_truth(system: System) -> None:
    replica = add_availability(system)
    event = upsert_event(reservation_stub(system), capacity=100_000)
    activity = Activity(system, event.id)
    try:
        time.sleep(0.5)
        system.restart_service(replica)
        time.sleep(0.5)
    finally:
        made = activity.stop()
    assert made > 10
    view = wait_converged(system, event.id, replica)
    assert view.available == view.capacity - view.paid - view.pending


def test_two_replicas_agree(system: System) -> None:
    first = add_availability(system)
    event = upsert_event(reservation_stub(system), capacity=100_000)
    activity = Activity(system, event.id)
    try:
        time.sleep(0.3)
        second = add_availability(system)  # joins mid-stream: rebuilds, then follows
        time.sleep(0.5)
    finally:
        activity.stop()
    # Holds placed above keep expiring (short TTL), so the truth moves: both replicas must match
    # it, and each other, in one and the same poll.
    deadline = time.monotonic() + 10
    while True:
        before, one = truth_and_view(system, event.id, first)
        two = truth_and_view(system, event.id, second)[1]
        after = reservation_stub(system).GetEvent(
            reservation_pb2.GetEventRequest(event_id=event.id), timeout=10
        )
        if before.version == after.version == one.version == two.version:
            break
        assert time.monotonic() < deadline, (
            f"replicas {one.version}, {two.version} vs {after.version}"
        )
        time.sleep(0.05)
    assert one == two
    assert (one.paid, one.pending) == (after.paid, after.pending)


def worker_processes(system: System, name: str, count: int) -> list[psutil.Process]:
    """The worker processes of replica ``name`` (titled ``slotlock-availability worker i/N``),
    once all ``count`` have named themselves."""
    root = psutil.Process(system.service(name).process.pid)
    deadline = time.monotonic() + 10
    while True:
        workers = [child for child in root.children() if "worker" in " ".join(child.cmdline())]
        if len(workers) == count:
            return workers
        assert time.monotonic() < deadline, [child.cmdline() for child in root.children()]
        time.sleep(0.05)


def watchers_per_worker(workers: list[psutil.Process], port: int) -> list[int]:
    """Client connections each worker holds on the shared port (each test connection carries
    one watch stream)."""
    return [
        sum(
            1
            for connection in worker.net_connections("tcp")
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
        )
        for worker in workers
    ]


def watch_when_ready(system: System, name: str, event_id: str) -> Watch:
    """A watch stream on a new connection (the kernel gives it to one of the workers), opened
    once that worker's view knows the event."""
    stub = availability_stub(system, name)
    wait_known(stub, event_id, starting=True)
    watch = Watch(stub, event_id)
    watch.wait_for(lambda m: True, within=5)  # the current state first
    return watch


def test_two_workers_share_the_port_and_each_sends_changes_to_its_watchers(
    system: System,
) -> None:
    """With SLOTLOCK_WORKERS=2 the replica is two processes on one port; each follows the feed
    itself, so the watchers the kernel gave to either see every change."""
    port = free_port()  # the workers share a fixed port
    replica = system.add_service("availability", port=port, env={"SLOTLOCK_WORKERS": "2"})
    system.start_service(replica)
    workers = worker_processes(system, replica, 2)
    titles = sorted(" ".join(worker.cmdline()).strip() for worker in workers)
    assert titles == [
        f"slotlock-availability worker 1/2 :{port}",
        f"slotlock-availability worker 2/2 :{port}",
    ]
    reservations = reservation_stub(system)
    event = upsert_event(reservations, capacity=100)
    watches: list[Watch] = []
    try:
        # New connections until each worker holds some (the kernel spreads them by a hash).
        while min(watchers_per_worker(workers, port)) == 0:
            assert len(watches) < 40, watchers_per_worker(workers, port)
            watches.append(watch_when_ready(system, replica, event.id))
        spread = watchers_per_worker(workers, port)
        assert sum(spread) == len(watches) and min(spread) >= 1

        hold(reservations, event.id, 3)
        for watch in watches:
            seen = watch.wait_for(lambda m: m.pending == 3, within=5)
            assert seen.available == 97
        hold(reservations, event.id, 4)
        for watch in watches:
            watch.wait_for(lambda m: m.pending == 7, within=5)
    finally:
        for watch in watches:
            watch.close()
