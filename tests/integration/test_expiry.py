"""Expiry: precise release, payment details cleared, never paid after expiry, and several
expirers at once releasing each hold exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest

from reservation_service.server import ReservationServer
from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from tests.support import StartReservation, open_channel


def stub_for(server: ReservationServer, channels: list[grpc.aio.Channel]) -> ReservationServiceStub:
    channel = open_channel(f"127.0.0.1:{server.port}")
    channels.append(channel)
    return ReservationServiceStub(channel)


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []
    yield opened
    for channel in opened:
        await channel.close()


async def test_expired_hold_is_released_on_time_and_cleared(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel], database_url: str
) -> None:
    # Late payments refunded by policy: a confirm after expiry never pays (issue 12's default
    # takes free seats again instead: tests/integration/test_hold_lifecycle.py).
    stub = stub_for(
        await start_reservation(hold_ttl_s=0.6, late_payments_take_free_seats=False), channels
    )
    event = await stub.UpsertEvent(event_request("EXP-T1", capacity=5))
    created = await stub.CreateHold(
        reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=2)
    )
    await stub.RecordPaymentAttempt(
        reservation_pb2.RecordPaymentAttemptRequest(
            reservation_id=created.reservation.id,
            hold_token=created.hold_token,
            payment=catalog_pb2.PaymentAttempt(provider_order_id="ord-9", qr_code="QR"),
        )
    )
    expires_at = created.reservation.expires_at.ToDatetime(tzinfo=UTC)
    while True:  # the expirer, not this test, releases it
        got = await stub.GetReservation(
            reservation_pb2.GetReservationRequest(reservation_id=created.reservation.id)
        )
        if got.status != catalog_pb2.RESERVATION_STATUS_PENDING:
            break
        assert datetime.now(UTC) < expires_at + timedelta(seconds=3), "hold not released"
        await asyncio.sleep(0.02)
    assert got.status == catalog_pb2.RESERVATION_STATUS_EXPIRED
    assert not got.HasField("payment")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT updated_at - expires_at, provider_order_id, qr_code FROM reservations WHERE id = %s",
            (created.reservation.id,),
        ).fetchone()
    assert row is not None
    lag, order_id, qr = row
    assert order_id is None and qr is None
    assert lag.total_seconds() >= 0
    assert lag.total_seconds() < 1.0, f"released {lag} after expires_at"
    assert (await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))).pending == 0

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=created.reservation.id,
                hold_token=created.hold_token,
                payment_reference="late",
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hold expired" in str(refused.value.details())
    paid = await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))
    assert paid.paid == 0


async def test_lapsed_hold_never_blocks_a_buyer_even_without_an_expirer(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel]
) -> None:
    stub = stub_for(
        await start_reservation(
            hold_ttl_s=0.3, run_expirer=False, late_payments_take_free_seats=False
        ),
        channels,
    )
    event = await stub.UpsertEvent(event_request("EXP-T2", capacity=3))
    first = await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=3))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1))
    assert "no seats are left" in str(full.value.details())
    await asyncio.sleep(0.4)
    # A confirm after the deadline fails even though nothing released the hold yet.
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=first.reservation.id,
                hold_token=first.hold_token,
                payment_reference="p",
            )
        )
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    second = await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=3))
    assert second.reservation.quantity == 3
    lapsed = await stub.GetReservation(
        reservation_pb2.GetReservationRequest(reservation_id=first.reservation.id)
    )
    # Issue 12: the late payment is recorded (it was EXPIRED before), to be refunded.
    assert lapsed.status == catalog_pb2.RESERVATION_STATUS_PAYMENT_TO_REFUND
    assert lapsed.payment_reference == "p"


async def test_several_expirers_release_each_hold_exactly_once(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel], database_url: str
) -> None:
    writer = stub_for(await start_reservation(hold_ttl_s=0.5, run_expirer=False), channels)
    events = [await writer.UpsertEvent(event_request(f"EXP-M{i}", capacity=100)) for i in range(3)]
    holds = await asyncio.gather(
        *(
            writer.CreateHold(
                reservation_pb2.CreateHoldRequest(event_id=events[i % 3].id, quantity=1 + i % 2)
            )
            for i in range(150)
        )
    )
    # Four replicas whose expirers race for the same due holds.
    for _ in range(4):
        await start_reservation(hold_ttl_s=0.5, expiry_recheck_s=0.1)
    deadline = time.monotonic() + 10
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM reservations WHERE status = 'PENDING'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "holds were not all released"
            await asyncio.sleep(0.05)
        expired_rows = conn.execute(
            "SELECT count(*) FROM reservations WHERE status = 'EXPIRED'"
        ).fetchone()
        counters = conn.execute("SELECT sum(pending), sum(paid) FROM events").fetchone()
        payloads = conn.execute("SELECT payload FROM outbox").fetchall()
    expired_changes = []
    for (payload,) in payloads:
        change = changes_pb2.EventChange.FromString(payload)
        if change.type == changes_pb2.CHANGE_TYPE_HOLD_EXPIRED:
            expired_changes.append(change.reservation.id)
    assert expired_rows == (len(holds),)
    assert counters == (0, 0)
    assert sorted(expired_changes) == sorted(h.reservation.id for h in holds)  # once each


async def test_expire_stale_holds_admin_pass(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel]
) -> None:
    stub = stub_for(await start_reservation(hold_ttl_s=0.2, run_expirer=False), channels)
    event = await stub.UpsertEvent(event_request("EXP-A1", capacity=10))
    for _ in range(4):
        await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1))
    nothing_due = await stub.ExpireStaleHolds(reservation_pb2.ExpireStaleHoldsRequest())
    assert (nothing_due.released, nothing_due.checked) == (0, 0)
    await asyncio.sleep(0.3)
    result = await stub.ExpireStaleHolds(reservation_pb2.ExpireStaleHoldsRequest())
    assert (result.released, result.checked) == (4, 4)
    again = await stub.ExpireStaleHolds(reservation_pb2.ExpireStaleHoldsRequest())
    assert (again.released, again.checked) == (0, 0)
    assert (await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))).pending == 0


HOLDS = 3000


async def test_expirer_keeps_up_while_holds_fall_due_continuously(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel], database_url: str
) -> None:
    """Holds falling due every few milliseconds while the expirer runs: every one is released
    (a pass once died on a hold that became due while its claim query ran)."""
    stub = stub_for(await start_reservation(hold_ttl_s=0.5), channels)
    events = [
        await stub.UpsertEvent(event_request(f"EXP-C{i}", capacity=10_000)) for i in range(20)
    ]

    async def one(i: int) -> None:
        await stub.CreateHold(
            reservation_pb2.CreateHoldRequest(event_id=events[i % 20].id, quantity=1)
        )

    tasks = []
    start = time.monotonic()
    for i in range(HOLDS):
        tasks.append(asyncio.create_task(one(i)))
        if i % 10 == 0:  # about 1,000 holds a second
            await asyncio.sleep(max(0.0, start + i / 1000 - time.monotonic()))
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 10
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM reservations WHERE status = 'PENDING'"
            ).fetchone()
            if row == (0,):
                break
            assert time.monotonic() < deadline, f"{row} holds never expired"
            await asyncio.sleep(0.1)
        expired = conn.execute(
            "SELECT count(*) FROM reservations WHERE status = 'EXPIRED'"
        ).fetchone()
    assert expired == (HOLDS,)


def test_claim_binds_its_clock_and_uses_the_expiry_index(database_url: str) -> None:
    """clock_timestamp() in a WHERE is volatile: the planner cannot bound an index scan with it
    and reads every PENDING hold. The expirer's one statement per pass (claim, due count, next
    lapse) reads its clock once and uses the expiry index for all three."""
    from reservation_service.store import EXPIRY

    with psycopg.connect(database_url) as conn:
        # Many holds, none due: a plan that reads them all is the one to rule out.
        conn.execute(
            "INSERT INTO events (id, code, experience_title, local_date, local_start_time,"
            " time_zone, starts_at, capacity, pending, status, currency, dinner_price,"
            " experience_only_price) VALUES (gen_random_uuid(), 'EXP-PLAN', 't', '2099-01-01',"
            " '19:00', 'UTC', '2099-01-01T19:00Z', 100000, 5000, 'SCHEDULED', 'IDR', 1, 1)"
        )
        conn.execute(
            "INSERT INTO reservations (id, event_id, quantity, ticket_type, status, created_at,"
            " updated_at, expires_at) SELECT gen_random_uuid(), id, 1, 'DINNER', 'PENDING',"
            " now(), now(), now() + interval '1 day' + n * interval '1 ms'"
            " FROM events, generate_series(1, 5000) AS n"
        )
        conn.execute("ANALYZE reservations")
        query = EXPIRY["claim_due_holds"]
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + query, {"limit": 500}).fetchall()
        )
        found = conn.cursor(row_factory=psycopg.rows.dict_row).execute(query, {"limit": 500})
        rows = found.fetchall()
        first = conn.execute(
            "SELECT min(expires_at) FROM reservations WHERE status = 'PENDING'"
        ).fetchone()
    assert "Index Cond" in plan and "Seq Scan" not in plan, plan
    assert len(rows) == 1 and rows[0]["id"] is None  # nothing claimed: one row of pass facts
    assert rows[0]["due"] == 0 and rows[0]["db_now"] is not None
    assert first is not None and rows[0]["next_lapse_at"] == first[0]


async def test_a_pass_skips_a_locked_hold_and_plans_to_come_back_for_it(
    start_reservation: StartReservation, channels: list[grpc.aio.Channel], database_url: str
) -> None:
    """A due hold locked elsewhere (a confirmation in progress) is skipped, not waited for, and
    the pass reports it as due (next lapse <= 0), so the expirer comes back for it at once rather
    than at the next re-check; the next pass releases it and reports nothing pending."""
    server = await start_reservation(hold_ttl_s=0.2, run_expirer=False)
    assert server.store is not None
    stub = stub_for(server, channels)
    event = await stub.UpsertEvent(event_request("EXP-L1", capacity=10))
    made = [
        await stub.CreateHold(reservation_pb2.CreateHoldRequest(event_id=event.id, quantity=1))
        for _ in range(3)
    ]
    await asyncio.sleep(0.3)
    locked = made[0].reservation.id
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM reservations WHERE id = %s FOR UPDATE", (locked,))
        first = await server.store.expire_due_holds(500)
        other.rollback()
    assert (first.released, first.checked) == (2, 3)
    assert first.next_lapse_s is not None and first.next_lapse_s <= 0
    second = await server.store.expire_due_holds(500)
    assert (second.released, second.checked, second.next_lapse_s) == (1, 1, None)
    assert (await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))).pending == 0
