"""The pure hold rules: no I/O, time passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reservation_service import errors, holds
from reservation_service.holds import (
    Event,
    EventStatus,
    HoldPolicy,
    HoldRequest,
    HoldTokens,
    Money,
    ReservationStatus,
    TicketType,
)
from slotlock.errors import SlotlockError

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = HoldPolicy(ttl=timedelta(minutes=5), max_seats_per_hold=10)


def make_event(capacity: int = 10, **fields: object) -> Event:
    event = Event(
        id="e1",
        code="DS-1",
        experience_title="Dinner",
        local_date=date(2026, 12, 24),
        local_start_time=time(19, 0),
        time_zone="Asia/Ho_Chi_Minh",
        starts_at=datetime(2026, 12, 24, 12, 0, tzinfo=UTC),
        capacity=capacity,
        status=EventStatus.SCHEDULED,
        experience_only_enabled=False,
        dinner_price=Money(1, "VND"),
        experience_only_price=Money(1, "VND"),
    )
    return replace(event, **fields)  # type: ignore[arg-type]


def request(quantity: int, **fields: object) -> HoldRequest:
    base = HoldRequest("e1", quantity, TicketType.DINNER, "cust", None)
    return replace(base, **fields)  # type: ignore[arg-type]


def test_place_hold_takes_seats_and_bumps_version() -> None:
    event, reservation, change = holds.place_hold(make_event(), request(3), POLICY, NOW, "r1")
    assert (event.pending, event.available, event.version) == (3, 7, 2)
    assert reservation.expires_at == NOW + timedelta(minutes=5)
    assert change.type is holds.ChangeType.HOLD_CREATED and change.event is event


@pytest.mark.parametrize(
    ("event", "req", "error", "words"),
    [
        (make_event(capacity=2), request(3), errors.NotEnoughSeats, "only 2 left"),
        (make_event(capacity=2, pending=2), request(1), errors.NotEnoughSeats, "no seats are left"),
        (make_event(status=EventStatus.CANCELLED), request(1), errors.EventNotOpen, "cancelled"),
        (make_event(status=EventStatus.SOLD_OUT), request(1), errors.EventNotOpen, "closed"),
        (make_event(starts_at=NOW), request(1), errors.EventStarted, "started"),
        (
            make_event(),
            request(1, ticket_type=TicketType.EXPERIENCE_ONLY),
            errors.TicketTypeDisabled,
            "experience",
        ),
    ],
)
def test_place_hold_refusals(
    event: Event, req: HoldRequest, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        holds.place_hold(event, req, POLICY, NOW, "r1")


@pytest.mark.parametrize(
    ("req", "error", "words"),
    [
        (request(0), errors.InvalidField, "at least 1"),
        (request(11), errors.InvalidField, "at most 10"),
    ],
)
def test_hold_request_refusals(req: HoldRequest, error: type[Exception], words: str) -> None:
    """Judged on the request alone, before it joins a batch (place_hold trusts it)."""
    with pytest.raises(error, match=words):
        holds.validate_hold_request(req, POLICY)


def test_confirm_is_idempotent_and_refused_after_expiry() -> None:
    event, held, _ = holds.place_hold(make_event(), request(2), POLICY, NOW, "r1")
    paid_event, paid, _ = holds.confirm_hold(event, held, "pay-1", NOW) or pytest.fail("no change")
    assert (paid_event.paid, paid_event.pending, paid.status) == (2, 0, ReservationStatus.PAID)
    assert holds.confirm_hold(paid_event, paid, "pay-1", NOW) is None
    with pytest.raises(errors.WrongHoldState):
        holds.confirm_hold(paid_event, paid, "pay-2", NOW)
    with pytest.raises(errors.HoldExpired):
        holds.confirm_hold(event, held, "pay-1", held.expires_at)


def test_expire_clears_payment_and_returns_seats() -> None:
    event, held, _ = holds.place_hold(make_event(), request(2), POLICY, NOW, "r1")
    held = holds.record_payment_attempt(held, holds.PaymentAttempt(provider_order_id="o"), NOW)
    with pytest.raises(errors.WrongHoldState):
        holds.expire_hold(event, held, NOW)
    after, expired, change = holds.expire_hold(event, held, held.expires_at)
    assert (after.pending, expired.status, expired.payment) == (0, ReservationStatus.EXPIRED, None)
    assert change.type is holds.ChangeType.HOLD_EXPIRED


def test_reported_status_reads_sold_out_when_every_seat_is_taken() -> None:
    assert make_event(capacity=2, pending=1, paid=1).reported_status is EventStatus.SOLD_OUT
    assert make_event(capacity=2, pending=1).reported_status is EventStatus.SCHEDULED
    assert (
        make_event(capacity=0, status=EventStatus.CANCELLED).reported_status
        is EventStatus.CANCELLED
    )


def test_idempotency_fingerprint_separates_requests() -> None:
    _, held, _ = holds.place_hold(make_event(), request(2, idempotency_key="k"), POLICY, NOW, "r1")
    assert holds.check_retry(held, request(2, idempotency_key="k")) is held
    with pytest.raises(errors.IdempotencyKeyReused):
        holds.check_retry(held, request(3, idempotency_key="k"))


def test_hold_tokens() -> None:
    tokens = HoldTokens(b"s")
    tokens.check("r1", tokens.token_for("r1"))
    with pytest.raises(errors.WrongHoldToken):
        tokens.check("r2", tokens.token_for("r1"))
    assert HoldTokens(b"other").token_for("r1") != tokens.token_for("r1")


@pytest.mark.parametrize("token", ["é" * 64, "\ud800", "\x00", "\U0001f600" * 16])
def test_any_string_is_a_wrong_token_not_a_crash(token: str) -> None:
    with pytest.raises(errors.WrongHoldToken):
        HoldTokens(b"s").check("r1", token)


def spec_starting(local_date: date, start: time, zone: str) -> holds.EventSpec:
    return holds.EventSpec(
        code="DS-1",
        experience_title="Dinner",
        local_date=local_date,
        local_start_time=start,
        time_zone=zone,
        capacity=10,
        status=None,
        experience_only_enabled=False,
        dinner_price=Money(1, "VND"),
        experience_only_price=Money(1, "VND"),
    )


@pytest.mark.parametrize(
    ("local_date", "start", "zone", "accepted"),
    [
        (date(1, 1, 1), time(0, 0), "Pacific/Kiritimati", False),  # the day before year 1 in UTC
        (date(1, 1, 1), time(23, 0), "UTC", False),  # a day's margin for other time zones
        (date(1, 1, 2), time(0, 0), "UTC", True),
        (date(9999, 12, 31), time(19, 0), "Etc/GMT+12", False),  # year 10000 in UTC
        (date(9999, 12, 30), time(23, 59), "UTC", True),
        (date(9999, 12, 30), time(12, 0), "Etc/GMT+12", False),
        (date(2026, 12, 24), time(19, 0), "Asia/Ho_Chi_Minh", True),
    ],
)
def test_event_starts_must_be_representable_in_any_time_zone(
    local_date: date, start: time, zone: str, accepted: bool
) -> None:
    spec = spec_starting(local_date, start, zone)
    if accepted:
        holds.validate_event_spec(spec)
    else:
        with pytest.raises(
            errors.InvalidField, match=r"local_date: .* outside the supported range"
        ):
            holds.validate_event_spec(spec)


def apply(
    op: str, event: Event, target: holds.Reservation, now: datetime
) -> tuple[Event, holds.Reservation, holds.Change] | None:
    if op == "confirm":
        return holds.confirm_hold(event, target, "p", now)
    if op == "release":
        return holds.release_hold(event, target, now)
    if op == "expire":
        return holds.expire_hold(event, target, now)
    return holds.refund_reservation(event, target, now)


operations = st.lists(
    st.tuples(
        st.sampled_from(["hold", "confirm", "release", "expire", "refund"]),
        st.integers(1, 4),
        st.integers(0, 30),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 12), ops=operations)
def test_any_sequence_keeps_counters_consistent(
    capacity: int, ops: list[tuple[str, int, int]]
) -> None:
    """Whatever happens, paid + pending <= capacity and the counters equal the holds' sums."""
    event = make_event(capacity=capacity)
    reservations: list[holds.Reservation] = []
    for n, (op, quantity, pick) in enumerate(ops):
        now = NOW + timedelta(minutes=n)
        target = reservations[pick % len(reservations)] if reservations else None
        try:
            if op == "hold":
                event, new, _ = holds.place_hold(event, request(quantity), POLICY, now, f"r{n}")
                reservations.append(new)
                continue
            if target is None:
                continue
            outcome = apply(op, event, target, now)
        except SlotlockError:
            continue
        if outcome is not None:
            event, changed, _ = outcome
            reservations = [changed if r.id == changed.id else r for r in reservations]
    assert event.paid + event.pending <= event.capacity
    assert event.pending == sum(
        r.quantity for r in reservations if r.status is ReservationStatus.PENDING
    )
    assert event.paid == sum(r.quantity for r in reservations if r.status is ReservationStatus.PAID)
