"""A row lock held by a client that went away (a dead node, a partition) does not stall holds for
ever: the lock wait ends (lock_timeout) and the caller hears UNAVAILABLE; once the lock is gone,
holds go through again."""

from __future__ import annotations

import time

import grpc
import psycopg
import pytest

from slotlock.v1 import reservation_pb2, reservation_pb2_grpc
from slotlock_cli.builders import event_request
from tests.support import StartReservation, open_channel


async def test_a_stuck_event_lock_ends_in_unavailable_not_a_hang(
    start_reservation: StartReservation, database_url: str
) -> None:
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reservation_pb2_grpc.ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("STUCK-1", capacity=5))
        with psycopg.connect(database_url) as stuck:
            stuck.execute("SELECT 1 FROM events WHERE id = %s FOR UPDATE", (event.id,))
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateHold(
                    reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1), timeout=30
                )
            waited = time.monotonic() - started
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert waited < 20, f"waited {waited:.1f} s for a lock nobody will release"
            stuck.rollback()  # the stuck client is gone
        held = await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1), timeout=30
        )
        assert held.reservation.quantity == 1
