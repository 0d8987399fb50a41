"""The whole life of a hold (issue 12) on real Postgres and NATS: ExtendHold and its caps (and its
race with the expirer), payment in progress with one grace period, late payments (taken again,
or PAYMENT_TO_REFUND; and their race with a CreateHold for the last seats), partial refunds,
per-customer limits under concurrent holds, per-event overrides, the history (ListChanges) and
"why not available, and when"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest

from availability_service.server import AvailabilityServer
from availability_service.settings import Settings as AvailabilitySettings
from reservation_service.server import ReservationServer
from slotlock.feed import Feed
from slotlock.grpc_errors import error_details
from slotlock.v1 import availability_pb2, availability_pb2_grpc, catalog_pb2, changes_pb2
from slotlock.v1 import reservation_pb2 as rpb
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from slotlock_cli.devstack import DevStack
from tests.support import TEST_SECURITY, StartReservation, open_channel

Stub = ReservationServiceStub
S = catalog_pb2


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []
    yield opened
    for channel in opened:
        await channel.close()


@pytest.fixture
async def connect(
    channels: list[grpc.aio.Channel],
) -> Any:
    def stub_for(server: ReservationServer, *roles: str) -> Stub:
        channel = open_channel(f"127.0.0.1:{server.port}", *roles)
        channels.append(channel)
        return ReservationServiceStub(channel)

    return stub_for


def at(stamp: Any) -> datetime:
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


async def refusal(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    details = error_details(refused.value)  # None from the auth interceptor's refusals
    reason, metadata = (details.reason, details.metadata) if details else ("", {})
    return refused.value.code(), reason, metadata, str(refused.value.details())


def feed_changes(database_url: str, event_id: str) -> list[changes_pb2.EventChange]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT payload FROM outbox WHERE event_id = %s ORDER BY id", (event_id,)
        ).fetchall()
    return [changes_pb2.EventChange.FromString(payload) for (payload,) in rows]


def seat_counts(database_url: str, event_id: str) -> tuple[int, int, int, int]:
    """The event's (paid, pending) counters and what its reservations add up to."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT e.paid, e.pending,"
            " (SELECT coalesce(sum(quantity - refunded_quantity), 0) FROM reservations"
            "  WHERE event_id = e.id AND status = 'PAID'),"
            " (SELECT coalesce(sum(quantity), 0) FROM reservations"
            "  WHERE event_id = e.id AND status = 'PENDING')"
            " FROM events e WHERE e.id = %s",
            (event_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def hold(stub: Stub, event_id: str, quantity: int, **fields: Any) -> rpb.CreateHoldResponse:
    return await stub.CreateHold(
        rpb.CreateHoldRequest(event_id=event_id, quantity=quantity, **fields)
    )


async def wait_status(stub: Stub, reservation_id: str, status: int, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        got = await stub.GetReservation(rpb.GetReservationRequest(reservation_id=reservation_id))
        if got.status == status:
            return got
        assert time.monotonic() < deadline, f"still {got.status}, not {status}"
        await asyncio.sleep(0.02)


# --- 1. ExtendHold ------------------------------------------------------------------------------


async def test_extend_hold_moves_the_deadline_within_its_caps(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    server = await start_reservation(
        hold_ttl_s=60, hold_extension_s=30, max_hold_extensions=2, max_hold_lifetime_s=150
    )
    stub = connect(server)
    event = await stub.UpsertEvent(event_request("EXT-1", capacity=5))
    created = await hold(stub, event.id, 2)
    first = created.reservation
    extend = rpb.ExtendHoldRequest(reservation_id=first.id, hold_token=created.hold_token)

    once = await stub.ExtendHold(extend)
    assert at(once.expires_at) - at(first.expires_at) == timedelta(seconds=30)
    assert once.extensions == 1
    # A requested step, cut at created_at + the maximum lifetime (150 s).
    twice = await stub.ExtendHold(
        rpb.ExtendHoldRequest(
            reservation_id=first.id, hold_token=created.hold_token, extend_by_s=3600
        )
    )
    assert at(twice.expires_at) == at(first.created_at) + timedelta(seconds=150)
    code, reason, metadata, _ = await refusal(stub.ExtendHold(extend))
    assert (code, reason, metadata["cause"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_EXTENDABLE",
        "MAX_EXTENSIONS",
    )
    # The wrong token proves nothing.
    code, *_ = await refusal(
        stub.ExtendHold(rpb.ExtendHoldRequest(reservation_id=first.id, hold_token="0" * 64))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    kinds = [c.type for c in feed_changes(database_url, event.id)]
    assert kinds.count(changes_pb2.CHANGE_TYPE_HOLD_EXTENDED) == 2
    assert (await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))).pending == 2


async def test_extend_hold_is_capped_by_an_events_lifetime_and_refused_once_paid(
    start_reservation: StartReservation, connect: Any
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=60))
    event = await stub.UpsertEvent(event_request("EXT-2", capacity=5, max_hold_lifetime_s=60))
    created = await hold(stub, event.id, 1)
    extend = rpb.ExtendHoldRequest(
        reservation_id=created.reservation.id, hold_token=created.hold_token
    )
    code, reason, metadata, message = await refusal(stub.ExtendHold(extend))
    assert (reason, metadata["cause"]) == ("HOLD_NOT_EXTENDABLE", "MAX_LIFETIME"), message
    await stub.ConfirmHold(
        rpb.ConfirmHoldRequest(
            reservation_id=created.reservation.id,
            hold_token=created.hold_token,
            payment_reference="pay",
        )
    )
    code, reason, _, _ = await refusal(stub.ExtendHold(extend))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_HOLD_STATE")


async def test_extend_hold_against_the_expirer_at_the_deadline(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    """Each hold is extended right at its deadline while the expirer releases due holds: it is
    either extended (and then lapses at its new deadline, not the old one) or refused as expired,
    never both, and the counters always match the rows."""
    server = await start_reservation(hold_ttl_s=0.6, hold_extension_s=1.0, expiry_recheck_s=0.05)
    stub = connect(server)
    event = await stub.UpsertEvent(event_request("EXT-RACE", capacity=100))
    created = [await hold(stub, event.id, 1) for _ in range(30)]
    deadline = at(created[0].reservation.expires_at)

    async def extend_at_deadline(h: rpb.CreateHoldResponse) -> Any:
        delay = (at(h.reservation.expires_at) - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(0.0, delay - 0.01))
        try:
            return await stub.ExtendHold(
                rpb.ExtendHoldRequest(reservation_id=h.reservation.id, hold_token=h.hold_token)
            )
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            assert details is not None and details.reason == "HOLD_EXPIRED", error.details()
            return None

    outcomes = await asyncio.gather(*(extend_at_deadline(h) for h in created))
    extended = [o for o in outcomes if o is not None]
    paid, pending, paid_rows, pending_rows = seat_counts(database_url, event.id)
    assert (paid, pending) == (paid_rows, pending_rows)
    for reservation in extended:
        assert at(reservation.expires_at) > deadline
        got = await stub.GetReservation(rpb.GetReservationRequest(reservation_id=reservation.id))
        # The expirer did not take an extended hold at its old deadline ...
        assert got.status == S.RESERVATION_STATUS_PENDING or datetime.now(UTC) >= at(
            reservation.expires_at
        )
    # ... and wakes for the new one.
    for reservation in extended:
        got = await wait_status(stub, reservation.id, S.RESERVATION_STATUS_EXPIRED, within=5)
        assert at(got.updated_at) >= at(reservation.expires_at)
    assert seat_counts(database_url, event.id) == (0, 0, 0, 0)
    with psycopg.connect(database_url) as conn:
        expired = conn.execute(
            "SELECT count(*) FROM history WHERE event_id = %s AND change_type = 'HOLD_EXPIRED'",
            (event.id,),
        ).fetchone()
    assert expired == (30,)  # every hold expired exactly once


# --- 2. Payment in progress ---------------------------------------------------------------------


async def test_payment_in_progress_gets_one_grace_period_then_lapses(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    stub = connect(
        await start_reservation(hold_ttl_s=0.5, payment_grace_s=1.0, expiry_recheck_s=0.1)
    )
    event = await stub.UpsertEvent(event_request("GRACE-1", capacity=5))
    paying, idle = await hold(stub, event.id, 2), await hold(stub, event.id, 1)
    recorded = await stub.RecordPaymentAttempt(
        rpb.RecordPaymentAttemptRequest(
            reservation_id=paying.reservation.id,
            hold_token=paying.hold_token,
            payment=S.PaymentAttempt(provider_order_id="ord-1", qr_code="QR"),
            payment_in_progress=True,
        )
    )
    grace_until = at(recorded.payment_grace_until)
    assert grace_until - at(recorded.expires_at) == timedelta(seconds=1)
    # Past the deadline: the idle hold lapses, the paying one is still being processed.
    await wait_status(stub, idle.reservation.id, S.RESERVATION_STATUS_EXPIRED, within=3)
    got = await stub.GetReservation(rpb.GetReservationRequest(reservation_id=paying.reservation.id))
    assert got.status == S.RESERVATION_STATUS_PENDING and got.payment.provider_order_id == "ord-1"
    assert (await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))).pending == 2
    # A second attempt does not renew the grace.
    again = await stub.RecordPaymentAttempt(
        rpb.RecordPaymentAttemptRequest(
            reservation_id=paying.reservation.id,
            hold_token=paying.hold_token,
            payment=S.PaymentAttempt(provider_order_id="ord-2"),
            payment_in_progress=True,
        )
    )
    assert at(again.payment_grace_until) == grace_until
    lapsed = await wait_status(stub, paying.reservation.id, S.RESERVATION_STATUS_EXPIRED, within=4)
    assert at(lapsed.updated_at) >= grace_until
    assert (await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))).pending == 0
    kinds = [c.type for c in feed_changes(database_url, event.id)]
    assert kinds.count(changes_pb2.CHANGE_TYPE_PAYMENT_ATTEMPT_RECORDED) == 2


async def test_a_confirm_during_the_grace_is_on_time(
    start_reservation: StartReservation, connect: Any
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=0.3, payment_grace_s=30))
    event = await stub.UpsertEvent(event_request("GRACE-2", capacity=5))
    created = await hold(stub, event.id, 2)
    await stub.RecordPaymentAttempt(
        rpb.RecordPaymentAttemptRequest(
            reservation_id=created.reservation.id,
            hold_token=created.hold_token,
            payment=S.PaymentAttempt(provider_order_id="ord-3"),
            payment_in_progress=True,
        )
    )
    await asyncio.sleep(0.5)
    paid = await stub.ConfirmHold(
        rpb.ConfirmHoldRequest(
            reservation_id=created.reservation.id,
            hold_token=created.hold_token,
            payment_reference="p-3",
        )
    )
    assert (paid.status, paid.paid_late) == (S.RESERVATION_STATUS_PAID, False)


# --- 3. Late payments -----------------------------------------------------------------------------


async def test_a_late_payment_takes_free_seats_again(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=0.3, expiry_recheck_s=0.1))
    event = await stub.UpsertEvent(event_request("LATE-1", capacity=5))
    created = await hold(stub, event.id, 2)
    await wait_status(stub, created.reservation.id, S.RESERVATION_STATUS_EXPIRED, within=3)
    confirm = rpb.ConfirmHoldRequest(
        reservation_id=created.reservation.id, hold_token=created.hold_token, payment_reference="L1"
    )
    paid = await stub.ConfirmHold(confirm)
    assert (paid.status, paid.paid_late, paid.payment_reference) == (
        S.RESERVATION_STATUS_PAID,
        True,
        "L1",
    )
    assert await stub.ConfirmHold(confirm) == paid  # a retry changes nothing
    assert seat_counts(database_url, event.id) == (2, 0, 2, 0)
    last = feed_changes(database_url, event.id)[-1]
    assert last.type == changes_pb2.CHANGE_TYPE_HOLD_CONFIRMED and last.reservation.paid_late


async def test_a_late_payment_without_seats_is_recorded_for_a_refund(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=0.3, expiry_recheck_s=0.1))
    event = await stub.UpsertEvent(event_request("LATE-2", capacity=2))
    late = await hold(stub, event.id, 2)
    await wait_status(stub, late.reservation.id, S.RESERVATION_STATUS_EXPIRED, within=3)
    other = await hold(stub, event.id, 2)
    confirm = rpb.ConfirmHoldRequest(
        reservation_id=late.reservation.id, hold_token=late.hold_token, payment_reference="L2"
    )
    code, reason, metadata, message = await refusal(stub.ConfirmHold(confirm))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_TO_REFUND")
    assert metadata["payment_reference"] == "L2" and "will be refunded" in message
    # The same answer to a retry, nothing changed.
    assert (await refusal(stub.ConfirmHold(confirm)))[1] == "PAYMENT_TO_REFUND"
    got = await stub.GetReservation(rpb.GetReservationRequest(reservation_id=late.reservation.id))
    assert (got.status, got.payment_reference) == (S.RESERVATION_STATUS_PAYMENT_TO_REFUND, "L2")
    assert seat_counts(database_url, event.id) == (0, 2, 0, 2)  # the other buyer keeps the seats
    kinds = [c.type for c in feed_changes(database_url, event.id)]
    assert kinds.count(changes_pb2.CHANGE_TYPE_PAYMENT_TO_REFUND) == 1
    refunded = await stub.RefundReservation(
        rpb.RefundReservationRequest(reservation_id=late.reservation.id, reason="late payment")
    )
    assert refunded.status == S.RESERVATION_STATUS_REFUNDED
    assert seat_counts(database_url, event.id) == (0, 2, 0, 2)
    assert other.reservation.status == S.RESERVATION_STATUS_PENDING


async def test_late_confirm_against_a_create_hold_for_the_last_seats(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    """Exactly one of the two gets the seats: the late payment (PAID, and the hold is refused)
    or the new hold (and the payment is PAYMENT_TO_REFUND); the counters stay exact."""
    stub = connect(await start_reservation(hold_ttl_s=0.3, run_expirer=False))
    events = [await stub.UpsertEvent(event_request(f"LATE-R{i}", capacity=3)) for i in range(12)]
    # Half the holds EXPIRED, half still PENDING past their deadline (no expirer runs here).
    lapsing = [await hold(stub, e.id, 3) for e in events[:6]]
    await asyncio.sleep(0.4)
    await stub.ExpireStaleHolds(rpb.ExpireStaleHoldsRequest())
    lapsing += [await hold(stub, e.id, 3) for e in events[6:]]
    await asyncio.sleep(0.4)

    async def late_confirm(h: rpb.CreateHoldResponse) -> str:
        try:
            await stub.ConfirmHold(
                rpb.ConfirmHoldRequest(
                    reservation_id=h.reservation.id, hold_token=h.hold_token, payment_reference="X"
                )
            )
            return "paid"
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            assert details is not None and details.reason == "PAYMENT_TO_REFUND", error.details()
            return "to_refund"

    async def new_hold(event_id: str, delay: float) -> str:
        await asyncio.sleep(delay)
        try:
            await hold(stub, event_id, 3)
            return "held"
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            assert details is not None and details.reason == "NOT_ENOUGH_SEATS", error.details()
            return "refused"

    results = await asyncio.gather(
        *(
            # Every third hold comes a moment after the confirm, so both orders are exercised.
            asyncio.gather(late_confirm(h), new_hold(e.id, 0.05 if i % 3 == 0 else 0.0))
            for i, (h, e) in enumerate(zip(lapsing, events, strict=True))
        )
    )
    for (payment, buyer), e in zip(results, events, strict=True):
        assert (payment, buyer) in {("paid", "refused"), ("to_refund", "held")}
        paid, pending, paid_rows, pending_rows = seat_counts(database_url, e.id)
        assert (paid, pending) == (paid_rows, pending_rows)
        assert paid + pending == 3
    # Both ends were exercised: an EXPIRED hold whose seats are free is taken again too.
    outcomes = {tuple(r) for r in results}
    assert ("paid", "refused") in outcomes and ("to_refund", "held") in outcomes


# --- 4. Per-customer limits and per-event overrides ------------------------------------------


async def test_per_customer_limit_under_concurrent_holds_of_one_customer(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    stub = connect(await start_reservation(max_seats_per_customer=4))
    event = await stub.UpsertEvent(event_request("CUST-1", capacity=50))

    async def attempt(customer: str) -> Any:
        try:
            return (await hold(stub, event.id, 1, customer_ref=customer)).reservation
        except grpc.aio.AioRpcError as error:
            return error

    outcomes = await asyncio.gather(*(attempt("alice") for _ in range(20)))
    granted = [o for o in outcomes if not isinstance(o, grpc.aio.AioRpcError)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(granted) == 4
    for error in refused:
        details = error_details(error)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details is not None and details.reason == "CUSTOMER_LIMIT_REACHED"
        assert details.metadata["max_seats_per_customer"] == "4"
        assert "already holds" in str(error.details())
    assert (await hold(stub, event.id, 4, customer_ref="bob")).reservation.quantity == 4
    assert seat_counts(database_url, event.id) == (0, 8, 0, 8)
    # A per-event override applies at once.
    event = await stub.UpsertEvent(event_request("CUST-1", capacity=50, max_seats_per_customer=6))
    assert event.max_seats_per_customer == 6
    assert (await hold(stub, event.id, 2, customer_ref="alice")).reservation.quantity == 2
    _, reason, metadata, _ = await refusal(hold(stub, event.id, 1, customer_ref="alice"))
    assert (reason, metadata["seats_held_by_customer"]) == ("CUSTOMER_LIMIT_REACHED", "6")


async def test_per_event_hold_ttl_and_seats_per_hold(
    start_reservation: StartReservation, connect: Any
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=300, max_seats_per_hold=10))
    event = await stub.UpsertEvent(
        event_request("OVR-1", capacity=50, hold_ttl_s=120, max_seats_per_hold=4)
    )
    assert (event.hold_ttl_s, event.max_seats_per_hold) == (120, 4)
    created = (await hold(stub, event.id, 4)).reservation
    assert at(created.expires_at) - at(created.created_at) == timedelta(seconds=120)
    code, reason, _, message = await refusal(hold(stub, event.id, 5))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert "at most 4 seats per hold" in message
    # An event may lower the service's seats-per-hold maximum, never raise it.
    code, _, _, message = await refusal(
        stub.UpsertEvent(event_request("OVR-2", capacity=50, max_seats_per_hold=11))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_seats_per_hold" in message
    # 0 clears the override.
    event = await stub.UpsertEvent(event_request("OVR-1", capacity=50))
    assert (event.hold_ttl_s, event.max_seats_per_hold) == (0, 0)


# --- 5. Refunds ---------------------------------------------------------------------------------


async def test_partial_refunds_return_seats_at_once_and_carry_the_reason(
    start_reservation: StartReservation, connect: Any, database_url: str
) -> None:
    stub = connect(await start_reservation())
    event = await stub.UpsertEvent(event_request("REF-1", capacity=10))
    created = await hold(stub, event.id, 6)
    rid = created.reservation.id
    await stub.ConfirmHold(
        rpb.ConfirmHoldRequest(
            reservation_id=rid, hold_token=created.hold_token, payment_reference="P"
        )
    )
    part = await stub.RefundReservation(
        rpb.RefundReservationRequest(reservation_id=rid, quantity=2, reason="two guests ill")
    )
    assert (part.status, part.refunded_quantity, part.refund_reason) == (
        S.RESERVATION_STATUS_PAID,
        2,
        "two guests ill",
    )
    assert seat_counts(database_url, event.id) == (4, 0, 4, 0)
    code, _, _, message = await refusal(
        stub.RefundReservation(rpb.RefundReservationRequest(reservation_id=rid, quantity=5))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4 seats left to refund" in message
    # Concurrent partial refunds of the rest: each takes its seats once.
    await asyncio.gather(
        *(
            stub.RefundReservation(
                rpb.RefundReservationRequest(reservation_id=rid, quantity=1, reason=f"r{i}")
            )
            for i in range(4)
        )
    )
    done = await stub.GetReservation(rpb.GetReservationRequest(reservation_id=rid))
    assert (done.status, done.refunded_quantity) == (S.RESERVATION_STATUS_REFUNDED, 6)
    assert seat_counts(database_url, event.id) == (0, 0, 0, 0)
    refunds = [
        c
        for c in feed_changes(database_url, event.id)
        if c.type == changes_pb2.CHANGE_TYPE_RESERVATION_REFUNDED
    ]
    assert [c.refunded_seats for c in refunds] == [2, 1, 1, 1, 1]
    assert refunds[0].reason == "two guests ill"
    assert (await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))).available == 10


# --- 6. History ---------------------------------------------------------------------------------


async def test_list_changes_tells_who_when_what_and_why(
    start_reservation: StartReservation, connect: Any
) -> None:
    server = await start_reservation(hold_ttl_s=60)
    admin, booking = connect(server), connect(server, "booking")
    event = await admin.UpsertEvent(event_request("HIST-1", capacity=10))
    created = await booking.CreateHold(rpb.CreateHoldRequest(event_id=event.id, quantity=3))
    rid, token = created.reservation.id, created.hold_token
    await booking.ExtendHold(rpb.ExtendHoldRequest(reservation_id=rid, hold_token=token))
    await booking.ConfirmHold(
        rpb.ConfirmHoldRequest(reservation_id=rid, hold_token=token, payment_reference="H")
    )
    await admin.RefundReservation(
        rpb.RefundReservationRequest(reservation_id=rid, quantity=1, reason="goodwill")
    )
    page = await admin.ListChanges(rpb.ListChangesRequest(reservation_id=rid))
    assert [c.change_type for c in page.changes] == [
        "HOLD_CREATED",
        "HOLD_EXTENDED",
        "HOLD_CONFIRMED",
        "RESERVATION_REFUNDED",
    ]
    assert {c.actor for c in page.changes} == {"tests"}  # the token's subject
    refund = page.changes[-1]
    assert (refund.reason, refund.seats, refund.reservation_status) == (
        "goodwill",
        1,
        S.RESERVATION_STATUS_PAID,
    )
    assert "expires_at" in page.changes[1].detail
    # By event, a page at a time: the upsert too.
    seen: list[int] = []
    token_ = ""
    while True:
        got = await admin.ListChanges(
            rpb.ListChangesRequest(event_id=event.id, page_size=2, page_token=token_)
        )
        seen += [c.id for c in got.changes]
        token_ = got.next_page_token
        if not token_:
            break
    assert len(seen) == 5 and seen == sorted(seen)
    code, *_ = await refusal(booking.ListChanges(rpb.ListChangesRequest(event_id=event.id)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, *_ = await refusal(admin.ListChanges(rpb.ListChangesRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- 7. Why not available, and when ------------------------------------------------------------


async def test_refusal_says_seats_are_in_checkout_and_when_the_first_hold_lapses(
    start_reservation: StartReservation, connect: Any
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=120))
    event = await stub.UpsertEvent(event_request("WHY-1", capacity=3))
    first = (await hold(stub, event.id, 2)).reservation
    await hold(stub, event.id, 1)
    code, reason, metadata, message = await refusal(hold(stub, event.id, 1))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENOUGH_SEATS")
    assert "all 3 remaining seats are in checkout; the first hold lapses at" in message
    assert metadata["seats_in_checkout"] == "3"
    assert datetime.fromisoformat(metadata["next_hold_lapses_at"]) == at(first.expires_at)
    got = await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))
    assert at(got.next_hold_lapses_at) == at(first.expires_at)


# --- the availability side applies the new change types ------------------------------------------


async def test_availability_applies_the_new_change_types(
    start_reservation: StartReservation, connect: Any, stack: DevStack, feed: Feed
) -> None:
    stub = connect(await start_reservation(hold_ttl_s=60, payment_grace_s=60))
    settings = AvailabilitySettings(
        nats_url=stack.nats_url, feed=feed, port=0, security=TEST_SECURITY
    )
    server = await AvailabilityServer(settings, heartbeat_s=0.5).start()
    try:
        await asyncio.wait_for(server.view.wait_ready(), 10)
        async with open_channel(server.address) as channel:
            availability = availability_pb2_grpc.AvailabilityServiceStub(channel)
            event = await stub.UpsertEvent(event_request("AV-1", capacity=4))
            created = await hold(stub, event.id, 2)
            rid, token = created.reservation.id, created.hold_token
            await stub.ExtendHold(rpb.ExtendHoldRequest(reservation_id=rid, hold_token=token))
            await stub.RecordPaymentAttempt(
                rpb.RecordPaymentAttemptRequest(
                    reservation_id=rid,
                    hold_token=token,
                    payment=S.PaymentAttempt(provider_order_id="o"),
                    payment_in_progress=True,
                )
            )
            await stub.ConfirmHold(
                rpb.ConfirmHoldRequest(reservation_id=rid, hold_token=token, payment_reference="p")
            )
            await stub.RefundReservation(
                rpb.RefundReservationRequest(reservation_id=rid, quantity=1)
            )
            final = await stub.GetEvent(rpb.GetEventRequest(event_id=event.id))
            deadline = time.monotonic() + 10
            while True:
                try:
                    view = await availability.GetEventAvailability(
                        availability_pb2.GetEventAvailabilityRequest(event_id=event.id)
                    )
                    if view.version == final.version:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert time.monotonic() < deadline, "the view never caught up"
                await asyncio.sleep(0.05)
            assert (view.paid, view.pending, view.available) == (1, 0, 3)
    finally:
        await server.stop(grace=0.5)
