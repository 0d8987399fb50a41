"""Group commit on real Postgres: a batch isolates a request that fails its transaction, a
caller whose deadline passed while its batch waited takes no seats, holds on many events share
batches, and confirms and releases are batched too."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import psycopg
import pytest
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from reservation_service import convert, errors
from reservation_service.application import Hold
from reservation_service.convert import event_spec_from_proto
from reservation_service.db import Database
from reservation_service.holds import HoldPolicy, HoldRequest, PaymentAttempt, TicketType
from reservation_service.store import ReservationStore
from slotlock.errors import SlotlockError
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


async def test_holds_on_many_events_share_transactions_and_every_counter_is_exact(
    start_reservation: StartReservation, database_url: str
) -> None:
    """Concurrent holds spread over events join the same batches (events locked in id order);
    each event's seats, version and outbox rows are exact, and a missing event refuses only its
    own requests."""
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        events = [
            await stub.UpsertEvent(event_request(f"SPREAD-{n}", capacity=50)) for n in range(7)
        ]
    reservations = server.reservations
    assert reservations is not None
    ghost = "00000000-0000-4000-8000-000000000000"
    requests = [hold_request(events[n % 7].id, f"b{n}") for n in range(70)]
    requests.insert(33, hold_request(ghost, "lost"))
    outcomes = await asyncio.gather(
        *(reservations.create_hold(r) for r in requests), return_exceptions=True
    )
    assert isinstance(outcomes.pop(33), errors.EventNotFound)
    assert all(isinstance(o, Hold) for o in outcomes), outcomes
    for event in events:
        assert counts(database_url, event.id) == (10, 11, 10, 11)


async def test_concurrent_confirms_and_releases_settle_together_each_with_its_outcome(
    start_reservation: StartReservation, database_url: str
) -> None:
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        events = [
            await stub.UpsertEvent(event_request(f"SETTLE-{n}", capacity=50)) for n in range(3)
        ]
    reservations = server.reservations
    assert reservations is not None
    placed = await asyncio.gather(
        *(reservations.create_hold(hold_request(events[n % 3].id, f"b{n}", 2)) for n in range(30))
    )
    calls = []
    for n, hold in enumerate(placed):
        if n % 2:
            calls.append(reservations.confirm_hold(hold.reservation.id, hold.token, f"pay-{n}"))
        else:
            calls.append(reservations.release_hold(hold.reservation.id, hold.token))
    calls.append(reservations.release_hold(placed[1].reservation.id, "not-its-token"))
    calls.append(reservations.confirm_hold(placed[3].reservation.id, placed[3].token, "pay-3"))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[30], SlotlockError), outcomes[30]  # a wrong token: alone
    for n, outcome in enumerate(outcomes[:30]):
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.status.value == ("PAID" if n % 2 else "CANCELLED")
    retried = outcomes[31]  # the same confirm again, in the same batch: idempotent
    assert not isinstance(retried, BaseException) and retried.status.value == "PAID"
    with psycopg.connect(database_url) as conn:
        for event in events:
            row = conn.execute(
                "SELECT paid, pending, version,"
                " (SELECT count(*) FROM outbox WHERE event_id = events.id)"
                " FROM events WHERE id = %s",
                (event.id,),
            ).fetchone()
            # 10 holds each: 5 paid (2 seats), 5 released; one version and outbox row per change.
            assert row == (10, 0, 21, 21), row


async def test_a_settled_batch_stores_each_reservation_as_its_outcome_reads(
    start_reservation: StartReservation, database_url: str
) -> None:
    """A batch's reservations are written by one statement: each row, field by field, is the
    reservation its caller was answered with (no value lands on another row)."""
    server = await start_reservation()
    async with open_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ReservationServiceStub(channel)
        event = await stub.UpsertEvent(event_request("SETTLE-ROWS", capacity=100))
    reservations = server.reservations
    assert reservations is not None
    placed = await asyncio.gather(
        *(reservations.create_hold(hold_request(event.id, f"r{n}", 1 + n % 3)) for n in range(12))
    )
    for n, hold in enumerate(placed[:6]):  # payment details on some, in progress on a few
        await reservations.record_payment_attempt(
            hold.reservation.id,
            hold.token,
            PaymentAttempt(f"order-{n}", f"va-{n}", "qr", ""),
            n % 2 == 0,
        )
    outcomes = await asyncio.gather(
        *(
            reservations.confirm_hold(hold.reservation.id, hold.token, f"pay-{n}")
            if n % 3
            else reservations.release_hold(hold.reservation.id, hold.token)
            for n, hold in enumerate(placed)
        )
    )
    columns = (
        "status, payment_reference, provider_order_id, virtual_account_number, qr_code,"
        " updated_at, expires_at, payment_grace_until, quantity"
    )
    with psycopg.connect(database_url) as conn:
        for outcome in outcomes:
            row = conn.execute(
                f"SELECT {columns} FROM reservations WHERE id = %s", (outcome.id,)
            ).fetchone()
            payment = outcome.payment
            assert row == (
                outcome.status.value,
                outcome.payment_reference,
                payment.provider_order_id if payment else None,
                payment.virtual_account_number if payment else None,
                payment.qr_code if payment else None,
                outcome.updated_at,
                outcome.expires_at,
                outcome.payment_grace_until,
                outcome.quantity,
            ), outcome


@pytest.mark.parametrize("notify", [True, False])
async def test_a_write_hints_the_relays_of_other_replicas_at_commit_when_asked(
    database_url: str, notify: bool
) -> None:
    """The outbox statement also sends the NOTIFY that wakes other replicas' relays (no
    statement of its own): delivered once the batch commits, and only when configured."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
        database_url, min_size=1, max_size=2, open=False
    )
    await pool.open(wait=True)
    listener = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        await listener.execute("LISTEN slotlock_outbox")
        store = ReservationStore(
            Database(pool), convert.change_payload, notify_other_replicas=notify
        )
        event = await store.upsert_event(event_spec_from_proto(event_request("NOTIFY-1")))
        outcomes = await store.create_holds([hold_request(event.id, "n1")], HoldPolicy())
        assert not isinstance(outcomes[0], SlotlockError)
        heard = []
        try:
            async with asyncio.timeout(1.0):
                async for note in listener.notifies():
                    heard.append(note.channel)
        except TimeoutError:
            pass
        assert heard == (["slotlock_outbox"] * 2 if notify else []), heard
    finally:
        await listener.close()
        await pool.close()


def test_lapsed_holds_are_found_by_the_pending_index_before_any_analyze(database_url: str) -> None:
    """CreateHold's lapsed-holds query must not read through the per-customer index: with it led
    by event_id (migration 0006), a table not yet analyzed sent every batch through all of the
    event's holds. The per-customer count still uses its index."""
    from reservation_service.store import BATCHES, HOLDS

    with psycopg.connect(database_url) as conn:
        event_id = conn.execute(
            "INSERT INTO events (id, code, experience_title, local_date, local_start_time,"
            " time_zone, starts_at, capacity, pending, status, currency, dinner_price,"
            " experience_only_price) VALUES (gen_random_uuid(), 'LAPSE-PLAN', 't', '2099-01-01',"
            " '19:00', 'UTC', '2099-01-01T19:00Z', 100000, 20000, 'SCHEDULED', 'IDR', 1, 1)"
            " RETURNING id"
        ).fetchone()
        assert event_id is not None
        # One customer holds them all (the bench's shape), none lapsed; no ANALYZE.
        conn.execute(
            "INSERT INTO reservations (id, event_id, quantity, ticket_type, status, customer_ref,"
            " created_at, updated_at, expires_at) SELECT gen_random_uuid(), %s, 1, 'DINNER',"
            " 'PENDING', 'bench', now(), now(), now() + interval '1 day'"
            " FROM generate_series(1, 20000)",
            (event_id[0],),
        )
        lapsed = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + BATCHES["lock_lapsed_holds_of_events"],
                {"event_ids": [event_id[0]], "now": datetime.now(UTC)},
            ).fetchall()
        )
        assert "reservations_held_by_customer" not in lapsed, lapsed
        assert "reservations_pending_by" in lapsed, lapsed
        seats = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + HOLDS["customer_seats"],
                {"event_id": event_id[0], "customer_refs": ["bench", "other"]},
            ).fetchall()
        )
        assert "reservations_held_by_customer" in seats, seats
