"""Group commit on real Postgres: a batch isolates a request that fails its transaction, and a
caller whose deadline passed while its batch waited takes no seats."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import grpc
import psycopg
import pytest

from reservation_service import errors
from reservation_service.application import Hold
from reservation_service.holds import HoldRequest, TicketType
from slotlock.v1 import reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from tests.support import StartReservation, open_channel


def counts(database_url: str, event_id: str) -> tuple[int, int, int, int]:
    """(pending seats, version, reservation rows, outbox rows) of one event."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT e.pending, e.version,"
            " (SELECT count(*) FROM reservations WHERE event_id = e.id),"
            " (SELECT count(*) FROM outbox WHERE event_id = e.id)"
            " FROM events e WHERE e.id = %s",
            (event_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def hold_request(event_id: str, ref: str, quantity: int = 1) -> HoldRequest:
    return HoldRequest(event_id, quantity, TicketType.DINNER, ref, None)


async def test_one_poisoned_request_fails_alone_and_every_valid_hold_in_its_batch_completes(
    start_reservation: StartReservation, database_url: str
) -> None:
    """Below the edge (which refuses NULs), a request Postgres rejects shares a batch with 30
    valid holds on the same event: it fails alone, and each of the 30 gets its seat."""
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("POISON-1", capacity=100))
    reservations = server.reservations
    assert reservations is not None
    valid = [hold_request(event.id, f"buyer-{n}") for n in range(30)]
    poisoned = hold_request(event.id, "bad\x00ref", quantity=2)
    requests = [*valid[:15], poisoned, *valid[15:]]
    outcomes = await asyncio.gather(
        *(reservations.create_hold(r) for r in requests), return_exceptions=True
    )
    failed = outcomes.pop(15)
    assert isinstance(failed, errors.DatabaseFailed), repr(failed)
    assert all(isinstance(o, Hold) for o in outcomes), [
        o for o in outcomes if not isinstance(o, Hold)
    ]
    assert sorted(o.reservation.customer_ref for o in outcomes if isinstance(o, Hold)) == sorted(
        r.customer_ref for r in valid
    )
    # Exact counters: 30 seats, one version and one outbox row per hold, after the upsert's.
    assert counts(database_url, event.id) == (30, 31, 30, 31)


async def test_a_hold_whose_deadline_passed_while_its_batch_waited_takes_no_seats(
    start_reservation: StartReservation, database_url: str
) -> None:
    """A batch waits on the event's row lock (held here by another transaction) while its caller
    gives up (its gRPC deadline passes); a caller queued behind it whose deadline has already
    passed takes no seat either; the others get theirs once the lock is free."""
    server = await start_reservation()
    reservations = server.reservations
    assert reservations is not None
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("LATE-1", capacity=100))
        with psycopg.connect(database_url) as blocker:
            blocker.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (event.id,))

            def create(quantity: int, timeout: float | None = None) -> asyncio.Task[object]:
                call = stub.CreateHold(
                    reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=quantity),
                    timeout=timeout,
                )
                return asyncio.ensure_future(call)

            gave_up = create(4, timeout=0.3)  # its batch is stuck on the lock
            await asyncio.sleep(0.1)
            patient = create(1)  # queued behind it
            expired = replace(
                hold_request(event.id, "queued-late", quantity=5), deadline=time.monotonic() - 1
            )
            queued_late = asyncio.ensure_future(reservations.create_hold(expired))
            queued_patient = asyncio.ensure_future(
                reservations.create_hold(hold_request(event.id, "queued", quantity=2))
            )
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await gave_up
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.2)
            blocker.rollback()  # the lock is free: the batch writes
        await patient
        assert isinstance(await queued_patient, Hold)
        with pytest.raises(errors.DeadlinePassed):
            await queued_late
    assert counts(database_url, event.id) == (3, 3, 2, 3)
