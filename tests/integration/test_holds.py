"""Holds over gRPC against real Postgres and NATS: never oversell, the lifecycle, idempotency,
tokens, capacity edits and cancellation."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import date, timedelta

import grpc
import psycopg
import pytest

from slotlock.v1 import catalog_pb2, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from tests.support import StartReservation, open_channel

Stub = ReservationServiceStub
PENDING = catalog_pb2.RESERVATION_STATUS_PENDING
PAID = catalog_pb2.RESERVATION_STATUS_PAID


async def hold(
    stub: Stub, event_id: str, quantity: int, **fields: object
) -> reservation_pb2.CreateHoldResponse:
    return await stub.CreateHold(
        reservation_pb2.CreateHoldRequest(event_id=event_id, quantity=quantity, **fields)  # type: ignore[arg-type]
    )


async def counters(stub: Stub, event_id: str) -> tuple[int, int, int]:
    event = await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event_id))
    return event.paid, event.pending, event.available


async def test_concurrent_holds_never_oversell_and_fill_exactly(
    reservation: Stub, database_url: str
) -> None:
    capacity = 50
    event = await reservation.UpsertEvent(event_request("HOT-1", capacity=capacity))
    rng = random.Random(7)
    quantities = [rng.choice([1, 2, 3, 4]) for _ in range(300)]

    async def attempt(quantity: int) -> int:
        try:
            reply = await hold(reservation, event.id, quantity)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            assert "not enough seats" in str(error.details())
            return 0
        return reply.reservation.quantity

    granted = sum(await asyncio.gather(*(attempt(q) for q in quantities)))
    assert granted <= capacity
    assert sum(quantities) > capacity  # demand exceeded supply
    # Whatever is left is smaller than every later refusal could use: top it up one seat at a time.
    singles = await asyncio.gather(*(attempt(1) for _ in range(capacity)))
    granted += sum(singles)
    assert granted == capacity
    paid, pending, available = await counters(reservation, event.id)
    assert (paid, pending, available) == (0, capacity, 0)
    with psycopg.connect(database_url) as conn:
        held = conn.execute(
            "SELECT coalesce(sum(quantity), 0) FROM reservations WHERE status = 'PENDING'"
        ).fetchone()
        outbox = conn.execute(
            "SELECT count(*) FROM outbox WHERE event_id = %s", (event.id,)
        ).fetchone()
        version = conn.execute("SELECT version FROM events WHERE id = %s", (event.id,)).fetchone()
    assert held == (capacity,)
    # One outbox row per change: the upsert plus each granted hold; the version counts them too.
    assert outbox is not None and version is not None
    assert outbox[0] == version[0]


async def test_database_itself_refuses_to_oversell(reservation: Stub, database_url: str) -> None:
    event = await reservation.UpsertEvent(event_request("CHECK-1", capacity=5))
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE events SET pending = 4, paid = 2 WHERE id = %s", (event.id,))


async def test_hold_lifecycle_pay_and_refund(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("LIFE-1", capacity=10))
    created = await hold(reservation, event.id, 3, customer_ref="cust-42")
    assert created.reservation.status == PENDING
    assert created.reservation.HasField("expires_at")
    assert created.hold_token
    assert await counters(reservation, event.id) == (0, 3, 7)

    attempt = catalog_pb2.PaymentAttempt(
        provider_order_id="ord-1",
        virtual_account_number="VA-9",
        qr_code="000201",
        qr_code_url="https://pay.example/qr/1",
    )
    recorded = await reservation.RecordPaymentAttempt(
        reservation_pb2.RecordPaymentAttemptRequest(
            reservation_id=created.reservation.id, hold_token=created.hold_token, payment=attempt
        )
    )
    assert recorded.payment.provider_order_id == "ord-1"

    confirm = reservation_pb2.ConfirmHoldRequest(
        reservation_id=created.reservation.id,
        hold_token=created.hold_token,
        payment_reference="pay-1",
    )
    paid = await reservation.ConfirmHold(confirm)
    assert paid.status == PAID
    assert await counters(reservation, event.id) == (3, 0, 7)
    again = await reservation.ConfirmHold(confirm)  # idempotent
    assert again.status == PAID
    assert await counters(reservation, event.id) == (3, 0, 7)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reservation.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(
                reservation_id=created.reservation.id, hold_token=created.hold_token
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    refunded = await reservation.RefundReservation(
        reservation_pb2.RefundReservationRequest(reservation_id=created.reservation.id)
    )
    assert refunded.status == catalog_pb2.RESERVATION_STATUS_REFUNDED
    assert await counters(reservation, event.id) == (0, 0, 10)


async def test_release_returns_seats_at_once_and_is_idempotent(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("REL-1", capacity=4))
    created = await hold(reservation, event.id, 4)
    assert await counters(reservation, event.id) == (0, 4, 0)
    release = reservation_pb2.ReleaseHoldRequest(
        reservation_id=created.reservation.id, hold_token=created.hold_token
    )
    released = await reservation.ReleaseHold(release)
    assert released.status == catalog_pb2.RESERVATION_STATUS_CANCELLED
    assert await counters(reservation, event.id) == (0, 0, 4)
    assert (
        await reservation.ReleaseHold(release)
    ).status == catalog_pb2.RESERVATION_STATUS_CANCELLED
    assert await counters(reservation, event.id) == (0, 0, 4)
    assert (await hold(reservation, event.id, 4)).reservation.quantity == 4


async def test_idempotent_retry_returns_the_same_hold(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("IDEM-1", capacity=10))
    key = str(uuid.uuid4())
    first, second = await asyncio.gather(
        hold(reservation, event.id, 2, idempotency_key=key, customer_ref="c1"),
        hold(reservation, event.id, 2, idempotency_key=key, customer_ref="c1"),
    )
    third = await hold(reservation, event.id, 2, idempotency_key=key, customer_ref="c1")
    assert first.reservation.id == second.reservation.id == third.reservation.id
    assert first.hold_token == third.hold_token
    assert await counters(reservation, event.id) == (0, 2, 8)

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await hold(reservation, event.id, 3, idempotency_key=key, customer_ref="c1")
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency key" in str(reused.value.details())
    assert await counters(reservation, event.id) == (0, 2, 8)


async def test_hold_token_is_checked(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("TOK-1", capacity=10))
    created = await hold(reservation, event.id, 1)
    other = await hold(reservation, event.id, 1)
    for call in (
        reservation.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=created.reservation.id,
                hold_token=other.hold_token,
                payment_reference="x",
            )
        ),
        reservation.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(
                reservation_id=created.reservation.id, hold_token="nope"
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await counters(reservation, event.id) == (0, 2, 8)


async def test_capacity_edits(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("CAP-1", capacity=10))
    await hold(reservation, event.id, 6)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reservation.UpsertEvent(event_request("CAP-1", capacity=5))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "below the 6 seats" in str(refused.value.details())
    shrunk = await reservation.UpsertEvent(event_request("CAP-1", capacity=6))
    assert (shrunk.capacity, shrunk.available, shrunk.status) == (
        6,
        0,
        catalog_pb2.EVENT_STATUS_SOLD_OUT,
    )
    grown = await reservation.UpsertEvent(event_request("CAP-1", capacity=20))
    assert (grown.id, grown.available, grown.status) == (
        event.id,
        14,
        catalog_pb2.EVENT_STATUS_SCHEDULED,
    )
    assert grown.version > shrunk.version > event.version


async def test_cancelling_an_event_releases_its_pending_holds(reservation: Stub) -> None:
    event = await reservation.UpsertEvent(event_request("CXL-1", capacity=10))
    pending = await hold(reservation, event.id, 2)
    bought = await hold(reservation, event.id, 3)
    await reservation.ConfirmHold(
        reservation_pb2.ConfirmHoldRequest(
            reservation_id=bought.reservation.id,
            hold_token=bought.hold_token,
            payment_reference="p",
        )
    )
    cancelled = await reservation.UpsertEvent(
        event_request("CXL-1", capacity=10, status=catalog_pb2.EVENT_STATUS_CANCELLED)
    )
    assert cancelled.status == catalog_pb2.EVENT_STATUS_CANCELLED
    assert (cancelled.paid, cancelled.pending) == (3, 0)
    released = await reservation.GetReservation(
        reservation_pb2.GetReservationRequest(reservation_id=pending.reservation.id)
    )
    assert released.status == catalog_pb2.RESERVATION_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await hold(reservation, event.id, 1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cancelled" in str(refused.value.details())


async def test_refusals_by_event_rules(reservation: Stub) -> None:
    started = await reservation.UpsertEvent(
        event_request("PAST-1", local_date=(date.today() - timedelta(days=1)).isoformat())
    )
    no_exp = await reservation.UpsertEvent(event_request("NOEXP-1", experience_only_enabled=False))
    cases = [
        (started.id, 1, catalog_pb2.TICKET_TYPE_DINNER, "already started"),
        (no_exp.id, 1, catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY, "experience-only"),
    ]
    for event_id, quantity, ticket_type, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await hold(reservation, event_id, quantity, ticket_type=ticket_type)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in str(refused.value.details())
    enabled = await reservation.UpsertEvent(event_request("EXP-1", experience_only_enabled=True))
    ok = await hold(reservation, enabled.id, 2, ticket_type=catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY)
    assert ok.reservation.ticket_type == catalog_pb2.TICKET_TYPE_EXPERIENCE_ONLY


async def test_lists_page_through_events_and_reservations(reservation: Stub) -> None:
    base = date.today() + timedelta(days=10)
    for i in range(7):
        await reservation.UpsertEvent(
            event_request(f"LIST-{i}", local_date=(base + timedelta(days=i)).isoformat())
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await reservation.ListEvents(
            reservation_pb2.ListEventsRequest(
                from_date=base.isoformat(),
                to_date=(base + timedelta(days=5)).isoformat(),
                page_size=4,
                page_token=token,
            )
        )
        seen += [e.code for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"LIST-{i}" for i in range(6)]

    event_id = (
        (await reservation.ListEvents(reservation_pb2.ListEventsRequest(page_size=1))).events[0].id
    )
    made = [(await hold(reservation, event_id, 1)).reservation.id for _ in range(5)]
    listed = await reservation.ListReservations(
        reservation_pb2.ListReservationsRequest(event_id=event_id, status=PENDING, page_size=3)
    )
    rest = await reservation.ListReservations(
        reservation_pb2.ListReservationsRequest(
            event_id=event_id, status=PENDING, page_size=3, page_token=listed.next_page_token
        )
    )
    assert [r.id for r in listed.reservations] + [r.id for r in rest.reservations] == made
    assert rest.next_page_token == ""


async def test_list_events_filters_on_the_status_a_listing_shows(reservation: Stub) -> None:
    """A scheduled event with no seat left reads SOLD_OUT: filtering by SCHEDULED must leave it
    out and filtering by SOLD_OUT must bring it, as the status each listed event shows."""
    day = (date.today() + timedelta(days=40)).isoformat()
    full = await reservation.UpsertEvent(event_request("FILTER-FULL", capacity=2, local_date=day))
    await hold(reservation, full.id, 2)
    await reservation.UpsertEvent(event_request("FILTER-OPEN", capacity=5, local_date=day))
    await reservation.UpsertEvent(
        event_request("FILTER-CLOSED", local_date=day, status=catalog_pb2.EVENT_STATUS_SOLD_OUT)
    )
    await reservation.UpsertEvent(
        event_request("FILTER-OFF", local_date=day, status=catalog_pb2.EVENT_STATUS_CANCELLED)
    )
    expected = {
        catalog_pb2.EVENT_STATUS_SCHEDULED: ["FILTER-OPEN"],
        catalog_pb2.EVENT_STATUS_SOLD_OUT: ["FILTER-CLOSED", "FILTER-FULL"],
        catalog_pb2.EVENT_STATUS_CANCELLED: ["FILTER-OFF"],
    }
    for status, codes in expected.items():
        listed = await reservation.ListEvents(
            reservation_pb2.ListEventsRequest(from_date=day, to_date=day, status=status)
        )
        assert sorted(e.code for e in listed.events) == codes
        assert {e.status for e in listed.events} == {status}


async def test_refund_reason_is_kept(reservation: Stub, database_url: str) -> None:
    event = await reservation.UpsertEvent(event_request("REFUND-WHY", capacity=3))
    created = await hold(reservation, event.id, 1)
    await reservation.ConfirmHold(
        reservation_pb2.ConfirmHoldRequest(
            reservation_id=created.reservation.id,
            hold_token=created.hold_token,
            payment_reference="pay-why",
        )
    )
    await reservation.RefundReservation(
        reservation_pb2.RefundReservationRequest(
            reservation_id=created.reservation.id, reason="guest fell ill"
        )
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT status, refund_reason FROM reservations WHERE id = %s",
            (created.reservation.id,),
        ).fetchone()
    assert row == ("REFUNDED", "guest fell ill")


async def test_cancelling_during_confirms_and_releases_takes_locks_in_one_order(
    start_reservation: StartReservation,
) -> None:
    """Cancel an event while its holds are being confirmed and released: every writer takes the
    hold's row before its event's row, so Postgres never has to break a deadlock (which costs a
    second, deadlock_timeout, and a retry) and the counters add up."""
    server = await start_reservation()
    assert server.store is not None
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        for round_ in range(3):
            code = f"LOCKS-{round_}"
            event = await stub.UpsertEvent(event_request(code, capacity=60))
            made = [await hold(stub, event.id, 1) for _ in range(40)]

            async def settle(n: int, created: reservation_pb2.CreateHoldResponse) -> None:
                ids = {"reservation_id": created.reservation.id, "hold_token": created.hold_token}
                try:
                    if n % 2:
                        await stub.ConfirmHold(
                            reservation_pb2.ConfirmHoldRequest(**ids, payment_reference=f"p{n}")
                        )
                    else:
                        await stub.ReleaseHold(reservation_pb2.ReleaseHoldRequest(**ids))
                except grpc.aio.AioRpcError as error:  # the cancellation released it first
                    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()

            async def cancel(code: str) -> catalog_pb2.Event:
                await asyncio.sleep(0.005)  # land among the settlements
                reply: catalog_pb2.Event = await stub.UpsertEvent(
                    event_request(code, capacity=60, status=catalog_pb2.EVENT_STATUS_CANCELLED)
                )
                return reply

            cancelling = asyncio.create_task(cancel(code))
            await asyncio.gather(*(settle(n, created) for n, created in enumerate(made)))
            cancelled = await cancelling
            assert cancelled.status == catalog_pb2.EVENT_STATUS_CANCELLED
            final = await stub.GetEvent(reservation_pb2.GetEventRequest(event_id=event.id))
            listed = await stub.ListReservations(
                reservation_pb2.ListReservationsRequest(event_id=event.id, page_size=100)
            )
            assert final.pending == 0
            assert final.paid == sum(r.quantity for r in listed.reservations if r.status == PAID)
    assert server.store.db.retries["DeadlockDetected"] == 0, server.store.db.retries
