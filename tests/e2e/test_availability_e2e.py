"""End to end, as operators run it: the reservation and availability services as processes on
the session's Postgres and NATS. Holds made through the reservation service reach availability
watchers within a second; restarts and replicas converge on the reservation service's truth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest

from slotlock.feed import Feed
from slotlock.v1 import (
    availability_pb2,
    availability_pb2_grpc,
    catalog_pb2,
    reservation_pb2,
    reservation_pb2_grpc,
)
from slotlock_cli.devstack import DevStack, free_port
from slotlock_cli.processes import ServiceProcess

HOLD_TTL_S = 1.5


def fresh_database(server_url: str) -> str:
    name = f"avail_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class Services:
    """One reservation service and any number of availability replicas, as processes."""

    def __init__(self, stack: DevStack, feed: Feed, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.feed_env = {
            "SLOTLOCK_NATS_URL": stack.nats_url,
            "SLOTLOCK_STREAM": feed.stream,
            "SLOTLOCK_SUBJECT_PREFIX": feed.subject_prefix,
        }
        port = free_port()
        self.reservation_addr = f"127.0.0.1:{port}"
        self.reservation = ServiceProcess(
            "reservation_service",
            {
                **self.feed_env,
                "SLOTLOCK_DATABASE_URL": fresh_database(stack.database_url),
                "SLOTLOCK_RESERVATION_PORT": str(port),
                "SLOTLOCK_HOLD_TTL_S": str(HOLD_TTL_S),
            },
            name="reservation",
            log_path=log_dir / "reservation.log",
        )
        self.availability: list[tuple[ServiceProcess, str]] = []
        self._channels: list[grpc.Channel] = []

    def start_reservation(self) -> None:
        self.reservation.start()
        self._wait(self.reservation, self.reservation_addr)

    def add_availability(self) -> int:
        port = free_port()
        number = len(self.availability)
        process = ServiceProcess(
            "availability_service",
            {**self.feed_env, "SLOTLOCK_AVAILABILITY_PORT": str(port)},
            name=f"availability-{number}",
            log_path=self.log_dir / f"availability-{number}.log",
        )
        self.availability.append((process, f"127.0.0.1:{port}"))
        self.restart_availability(number)
        return number

    def restart_availability(self, number: int) -> None:
        process, address = self.availability[number]
        process.stop()
        process.start()
        self._wait(process, address)

    def _wait(self, process: ServiceProcess, address: str) -> None:
        try:
            process.wait_serving(address, timeout=30)
        except (RuntimeError, TimeoutError) as error:
            log = process.log_path.read_text(errors="replace") if process.log_path else ""
            raise RuntimeError(f"{error}\n{log[-3000:]}") from None

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        self._channels.append(channel)
        return channel

    def reservations(self) -> reservation_pb2_grpc.ReservationServiceStub:
        return reservation_pb2_grpc.ReservationServiceStub(self.channel(self.reservation_addr))

    def availability_stub(self, number: int = 0) -> availability_pb2_grpc.AvailabilityServiceStub:
        return availability_pb2_grpc.AvailabilityServiceStub(
            self.channel(self.availability[number][1])
        )

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        for process, _ in self.availability:
            process.stop()
        self.reservation.stop()


@pytest.fixture
def services(stack: DevStack, feed: Feed, tmp_path: Path) -> Iterator[Services]:
    running = Services(stack, feed, tmp_path)
    try:
        running.start_reservation()
        yield running
    finally:
        running.stop()


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
    return stub.UpsertEvent(
        reservation_pb2.UpsertEventRequest(
            code=f"E2E-{uuid.uuid4().hex[:8]}",
            experience_title="Dinner in the dark",
            local_date=(date.today() + timedelta(days=30)).isoformat(),
            local_start_time="19:00",
            capacity=capacity,
            dinner_price=catalog_pb2.Money(amount=1_500_000, currency="VND"),
        ),
        timeout=10,
    )


def wait_known(stub: availability_pb2_grpc.AvailabilityServiceStub, event_id: str) -> None:
    """A new event reaches the availability view through the feed a moment after UpsertEvent
    returns; until then watching it by id is NOT_FOUND (by design, see the servicer)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            stub.GetEventAvailability(
                availability_pb2.GetEventAvailabilityRequest(event_id=event_id), timeout=5
            )
            return
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
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


def test_holds_reach_watchers_and_move_the_badge(services: Services) -> None:
    services.add_availability()
    reservations = services.reservations()
    event = upsert_event(reservations, capacity=10)
    wait_known(services.availability_stub(), event.id)
    watch = Watch(services.availability_stub(), event.id)
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


def truth_and_view(services: Services, event_id: str, number: int) -> tuple[Any, Any]:
    truth = services.reservations().GetEvent(
        reservation_pb2.GetEventRequest(event_id=event_id), timeout=10
    )
    view = services.availability_stub(number).GetEventAvailability(
        availability_pb2.GetEventAvailabilityRequest(event_id=event_id), timeout=10
    )
    return truth, view


def wait_converged(services: Services, event_id: str, number: int, within: float = 10) -> Any:
    deadline = time.monotonic() + within
    while True:
        truth, view = truth_and_view(services, event_id, number)
        if (truth.paid, truth.pending, truth.version) == (view.paid, view.pending, view.version):
            return view
        assert time.monotonic() < deadline, f"replica {number}: {view} != {truth}"
        time.sleep(0.05)


class Activity:
    """Holds placed on a thread (some released) until stopped."""

    def __init__(self, services: Services, event_id: str) -> None:
        self.stub = services.reservations()
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


def test_restart_during_activity_converges_on_the_truth(services: Services) -> None:
    number = services.add_availability()
    event = upsert_event(services.reservations(), capacity=100_000)
    activity = Activity(services, event.id)
    try:
        time.sleep(0.5)
        services.restart_availability(number)
        time.sleep(0.5)
    finally:
        made = activity.stop()
    assert made > 10
    view = wait_converged(services, event.id, number)
    assert view.available == view.capacity - view.paid - view.pending


def test_two_replicas_agree(services: Services) -> None:
    first = services.add_availability()
    event = upsert_event(services.reservations(), capacity=100_000)
    activity = Activity(services, event.id)
    try:
        time.sleep(0.3)
        second = services.add_availability()  # joins mid-stream: rebuilds, then follows
        time.sleep(0.5)
    finally:
        activity.stop()
    # Holds placed above keep expiring (short TTL), so the truth moves: both replicas must match
    # it, and each other, in one and the same poll.
    deadline = time.monotonic() + 10
    while True:
        before, one = truth_and_view(services, event.id, first)
        two = truth_and_view(services, event.id, second)[1]
        after = services.reservations().GetEvent(
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
