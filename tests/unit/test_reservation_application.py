"""The reservation use cases on the in-memory store: each rule judged once and in the right
place (before a batch, before a lookup, after a lookup), tokens, the expirer's wake-up, refunds and
page tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta

import pytest

from reservation_service import errors
from reservation_service.application import Reservations
from reservation_service.expiry import Expirer
from reservation_service.holds import (
    Event,
    EventSpec,
    EventStatus,
    HoldPolicy,
    HoldRequest,
    HoldTokens,
    Money,
    PaymentAttempt,
    ReservationStatus,
    TicketType,
)
from slotlock.errors import InvalidRequest
from tests.unit.fake_store import START, FakeStore

POLICY = HoldPolicy(ttl=timedelta(minutes=5), max_seats_per_hold=10)
TOKENS = HoldTokens(b"unit-secret")


@dataclass
class World:
    store: FakeStore
    reservations: Reservations
    deadlines: list[datetime] = field(default_factory=list)


class SpyExpirer(Expirer):
    """Records the deadlines it is told of instead of acting on them."""

    def __init__(self, store: FakeStore, deadlines: list[datetime]) -> None:
        super().__init__(store)
        self._deadlines = deadlines

    def notice_expiry(self, expires_at: datetime) -> None:
        self._deadlines.append(expires_at)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = FakeStore()
    deadlines: list[datetime] = []
    reservations = Reservations(store, SpyExpirer(store, deadlines), POLICY, TOKENS)
    yield World(store, reservations, deadlines)
    await reservations.close()


def spec(code: str = "DS-1", capacity: int = 10, **fields: object) -> EventSpec:
    base = EventSpec(
        code=code,
        experience_title="Dinner",
        local_date=date(2026, 12, 24),
        local_start_time=time(19, 0),
        time_zone="Asia/Ho_Chi_Minh",
        capacity=capacity,
        status=None,
        experience_only_enabled=False,
        dinner_price=Money(1_200_000, "VND"),
        experience_only_price=Money(600_000, "VND"),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def hold_request(event: Event, quantity: int = 1, **fields: object) -> HoldRequest:
    base = HoldRequest(event.id, quantity, TicketType.DINNER, "cust", None)
    return replace(base, **fields)  # type: ignore[arg-type]


async def test_a_hold_comes_with_its_token_and_tells_the_expirer(world: World) -> None:
    event = await world.reservations.upsert_event(spec())
    placed = await world.reservations.create_hold(hold_request(event, 2))
    assert placed.token == TOKENS.token_for(placed.reservation.id)
    assert placed.reservation.expires_at == START + POLICY.ttl
    assert world.deadlines == [placed.reservation.expires_at]
    assert world.store.paid_and_pending(event.id) == (0, 2)


async def test_an_idempotent_retry_gets_the_same_hold_and_token(world: World) -> None:
    event = await world.reservations.upsert_event(spec())
    first = await world.reservations.create_hold(hold_request(event, 2, idempotency_key="k"))
    again = await world.reservations.create_hold(hold_request(event, 2, idempotency_key="k"))
    assert again == first
    with pytest.raises(errors.IdempotencyKeyReused):
        await world.reservations.create_hold(hold_request(event, 3, idempotency_key="k"))


async def test_bad_hold_requests_never_reach_a_batch(world: World) -> None:
    event = await world.reservations.upsert_event(spec())
    for quantity, words in ((0, "at least 1"), (11, "at most 10")):
        with pytest.raises(errors.InvalidField, match=words):
            await world.reservations.create_hold(hold_request(event, quantity))
    assert world.store.batches == []
    assert world.deadlines == []


async def test_a_refusal_by_the_rules_comes_back_to_its_caller(world: World) -> None:
    event = await world.reservations.upsert_event(spec(capacity=1))
    with pytest.raises(errors.NotEnoughSeats, match="only 1 left"):
        await world.reservations.create_hold(hold_request(event, 2))
    assert world.deadlines == []


async def test_a_bad_event_spec_never_reaches_the_store(world: World) -> None:
    for bad, words in (
        (spec(code=" "), "code"),
        (spec(capacity=-1), "capacity"),
        (spec(time_zone="Mars/Base"), "time_zone"),
    ):
        with pytest.raises(errors.InvalidField, match=words):
            await world.reservations.upsert_event(bad)
    assert world.store.calls["upsert_event"] == 0


async def test_tokens_are_required_first_and_checked_once_the_hold_is_found(
    world: World,
) -> None:
    event = await world.reservations.upsert_event(spec())
    placed = await world.reservations.create_hold(hold_request(event))
    hold_id = placed.reservation.id
    reservations = world.reservations
    # Required: refused before any lookup.
    with pytest.raises(errors.InvalidField, match="hold_token"):
        await reservations.confirm_hold(hold_id, "", "pay-1")
    with pytest.raises(errors.InvalidField, match="hold_token"):
        await reservations.release_hold(hold_id, "")
    with pytest.raises(errors.InvalidField, match="hold_token"):
        await reservations.record_payment_attempt(hold_id, "", PaymentAttempt("o"))
    assert world.store.calls["settle_hold"] + world.store.calls["amend_hold"] == 0
    # Checked against the hold found: an unknown id reads NOT_FOUND, a wrong token DENIED.
    with pytest.raises(errors.ReservationNotFound):
        await reservations.confirm_hold(str(uuid.uuid4()), "wrong", "pay-1")
    other = TOKENS.token_for(str(uuid.uuid4()))
    with pytest.raises(errors.WrongHoldToken):
        await reservations.confirm_hold(hold_id, other, "pay-1")
    with pytest.raises(errors.WrongHoldToken):
        await reservations.release_hold(hold_id, other)
    with pytest.raises(errors.WrongHoldToken):
        await reservations.record_payment_attempt(hold_id, other, PaymentAttempt("o"))
    assert world.store.paid_and_pending(event.id) == (0, 1)
    paid = await reservations.confirm_hold(hold_id, placed.token, "  pay-1 ")
    assert (paid.status, paid.payment_reference) == (ReservationStatus.PAID, "pay-1")


async def test_payment_inputs_are_judged_before_the_store(world: World) -> None:
    event = await world.reservations.upsert_event(spec())
    placed = await world.reservations.create_hold(hold_request(event))
    hold_id = placed.reservation.id
    with pytest.raises(errors.InvalidField, match="payment_reference"):
        await world.reservations.confirm_hold(hold_id, placed.token, "  ")
    with pytest.raises(errors.InvalidField, match="provider_order_id"):
        await world.reservations.record_payment_attempt(hold_id, placed.token, PaymentAttempt())
    assert world.store.calls["settle_hold"] + world.store.calls["amend_hold"] == 0
    recorded = await world.reservations.record_payment_attempt(
        hold_id, placed.token, PaymentAttempt(provider_order_id="ord-1", qr_code="QR")
    )
    assert recorded.payment == PaymentAttempt(provider_order_id="ord-1", qr_code="QR")


async def test_a_refund_keeps_its_reason_and_gives_the_seats_back(world: World) -> None:
    event = await world.reservations.upsert_event(spec(capacity=4))
    placed = await world.reservations.create_hold(hold_request(event, 3))
    await world.reservations.confirm_hold(placed.reservation.id, placed.token, "pay-1")
    refunded = await world.reservations.refund_reservation(
        placed.reservation.id, "  guest fell ill "
    )
    assert (refunded.status, refunded.refund_reason) == (
        ReservationStatus.REFUNDED,
        "guest fell ill",
    )
    assert world.store.changes[-1].reservation == refunded
    assert world.store.paid_and_pending(event.id) == (0, 0)
    again = await world.reservations.refund_reservation(placed.reservation.id, "other words")
    assert again.refund_reason == "guest fell ill"  # an idempotent retry changes nothing


async def test_expire_pass_releases_due_holds(world: World) -> None:
    event = await world.reservations.upsert_event(spec())
    for _ in range(3):
        await world.reservations.create_hold(hold_request(event))
    nothing = await world.reservations.expire_pass()
    assert (nothing.released, nothing.checked) == (0, 0)
    world.store.now = START + POLICY.ttl
    done = await world.reservations.expire_pass()
    assert (done.released, done.checked) == (3, 3)
    assert world.store.paid_and_pending(event.id) == (0, 0)


async def test_event_pages_are_typed_and_bound_to_their_filters(world: World) -> None:
    for day in range(5):
        await world.reservations.upsert_event(
            spec(code=f"DS-{day}", local_date=date(2026, 12, 20 + day))
        )
    seen: list[str] = []
    token = ""
    while True:
        page, token = await world.reservations.list_events(
            from_date=None, to_date=None, status=None, page_size=2, page_token=token
        )
        seen += [e.code for e in page]
        if not token:
            break
        with pytest.raises(InvalidRequest, match="page_token"):
            await world.reservations.list_events(
                from_date=None,
                to_date=None,
                status=EventStatus.SCHEDULED,
                page_size=2,
                page_token=token,
            )
    assert seen == [f"DS-{day}" for day in range(5)]
    with pytest.raises(errors.InvalidField, match="to_date"):
        await world.reservations.list_events(
            from_date=date(2026, 12, 2),
            to_date=date(2026, 12, 1),
            status=None,
            page_size=0,
            page_token="",
        )
    with pytest.raises(errors.InvalidField, match="page_size"):
        await world.reservations.list_events(
            from_date=None, to_date=None, status=None, page_size=-1, page_token=""
        )


async def test_reservation_pages_are_bound_to_their_filters(world: World) -> None:
    first = await world.reservations.upsert_event(spec(code="A"))
    second = await world.reservations.upsert_event(spec(code="B"))
    made = []
    for n in range(3):
        world.store.now = START + timedelta(seconds=n)
        made.append((await world.reservations.create_hold(hold_request(first))).reservation.id)
    page, token = await world.reservations.list_reservations(
        event_id=first.id, status=ReservationStatus.PENDING, page_size=2, page_token=""
    )
    assert [r.id for r in page] == made[:2] and token
    for event_id, status in ((second.id, ReservationStatus.PENDING), (first.id, None)):
        with pytest.raises(InvalidRequest, match="page_token"):
            await world.reservations.list_reservations(
                event_id=event_id, status=status, page_size=2, page_token=token
            )
    rest, end = await world.reservations.list_reservations(
        event_id=first.id, status=ReservationStatus.PENDING, page_size=2, page_token=token
    )
    assert ([r.id for r in rest], end) == (made[2:], "")
