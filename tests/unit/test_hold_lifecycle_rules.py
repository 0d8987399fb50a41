"""The hold lifecycle rules of issue 12, pure: extension caps, payment grace, late payments,
partial refunds, per-customer limits and the "in checkout" explanation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from reservation_service import errors, holds
from reservation_service.holds import (
    ChangeType,
    EventOverrides,
    EventStatus,
    HoldPolicy,
    PaymentAttempt,
    ReservationStatus,
)
from tests.unit.test_hold_rules import NOW, make_event, request

POLICY = HoldPolicy(
    ttl=timedelta(minutes=5),
    extension=timedelta(minutes=5),
    max_extensions=2,
    max_hold_lifetime=timedelta(minutes=12),
    payment_grace=timedelta(minutes=10),
)


def placed(quantity: int = 2, capacity: int = 10, **event_fields: object):  # type: ignore[no-untyped-def]
    return holds.place_hold(
        make_event(capacity, **event_fields), request(quantity), POLICY, NOW, "r1"
    )


def test_extensions_are_capped_by_count_and_lifetime() -> None:
    event, held, _ = placed()
    event, once, change = holds.extend_hold(event, held, None, POLICY, NOW)
    assert (once.expires_at - held.expires_at, once.extensions) == (timedelta(minutes=5), 1)
    assert (change.type, event.version) == (ChangeType.HOLD_EXTENDED, 3)
    event, twice, _ = holds.extend_hold(event, once, timedelta(hours=1), POLICY, NOW)
    assert twice.expires_at == held.created_at + POLICY.max_hold_lifetime
    with pytest.raises(errors.HoldNotExtendable) as capped:
        holds.extend_hold(event, twice, None, POLICY, NOW)
    assert capped.value.cause == "MAX_EXTENSIONS"
    at_lifetime = holds.extension_refusal(
        twice, HoldPolicy(max_extensions=9, max_hold_lifetime=timedelta(minutes=12)), NOW
    )
    assert at_lifetime is not None and at_lifetime.cause == "MAX_LIFETIME"
    with pytest.raises(errors.HoldExpired):
        holds.extend_hold(event, held, None, POLICY, held.expires_at)


def test_payment_in_progress_defers_the_lapse_once() -> None:
    event, held, _ = placed()
    attempt = PaymentAttempt(provider_order_id="o")
    event, paying, change = holds.record_payment(event, held, attempt, True, POLICY, NOW)
    assert paying.payment_grace_until == held.expires_at + POLICY.payment_grace
    assert paying.lapses_at == paying.payment_grace_until and change.seats == 0
    assert not holds.is_lapsed(paying, held.expires_at)
    _, again, _ = holds.record_payment(event, paying, attempt, True, POLICY, held.expires_at)
    assert again.payment_grace_until == paying.payment_grace_until  # never renewed
    with pytest.raises(errors.WrongHoldState):
        holds.expire_hold(event, paying, held.expires_at)
    _, expired, _ = holds.expire_hold(event, paying, paying.lapses_at)
    assert expired.status is ReservationStatus.EXPIRED


def test_a_late_payment_takes_free_seats_or_goes_to_refund() -> None:
    event, held, _ = placed(quantity=3, capacity=3)
    late = held.expires_at
    after, paid, change = holds.confirm_payment(event, held, "p", POLICY, late) or pytest.fail()
    assert (paid.status, paid.paid_late, after.paid, after.pending) == (
        ReservationStatus.PAID,
        True,
        3,
        0,
    )
    assert change.type is ChangeType.HOLD_CONFIRMED
    # Expired, and another buyer took the seats meanwhile.
    event, expired, _ = holds.expire_hold(event, held, late)
    taken = holds.place_hold(event, request(3), POLICY, late, "r2")[0]
    after, refund, change = (
        holds.confirm_payment(taken, expired, "p", POLICY, late) or pytest.fail()
    )
    assert (refund.status, refund.payment_reference) == (ReservationStatus.PAYMENT_TO_REFUND, "p")
    assert (after.paid, after.pending, change.type) == (0, 3, ChangeType.PAYMENT_TO_REFUND)
    assert holds.confirm_payment(after, refund, "p", POLICY, late) is None  # a retry
    with pytest.raises(errors.WrongHoldState):
        holds.confirm_payment(after, refund, "other", POLICY, late)
    closed = holds.HoldPolicy(late_payments_take_free_seats=False)
    outcome = holds.confirm_payment(event, expired, "p", closed, late) or pytest.fail()
    assert outcome[1].status is ReservationStatus.PAYMENT_TO_REFUND
    cancelled = make_event(3, status=EventStatus.CANCELLED)
    outcome = holds.confirm_payment(cancelled, expired, "p", POLICY, late) or pytest.fail()
    assert outcome[1].status is ReservationStatus.PAYMENT_TO_REFUND


def test_partial_refunds_then_the_rest() -> None:
    event, held, _ = placed(quantity=6)
    event, paid, _ = holds.confirm_hold(event, held, "p", NOW) or pytest.fail()
    event, part, change = holds.refund_reservation(event, paid, NOW, "ill", 2) or pytest.fail()
    assert (part.status, part.refunded_quantity, part.seats, event.paid) == (
        ReservationStatus.PAID,
        2,
        4,
        4,
    )
    assert (change.seats, change.reason) == (2, "ill")
    with pytest.raises(errors.InvalidField):
        holds.refund_reservation(event, part, NOW, "", 5)
    event, rest, change = holds.refund_reservation(event, part, NOW, "rest") or pytest.fail()
    assert (rest.status, rest.refunded_quantity, event.paid, change.seats) == (
        ReservationStatus.REFUNDED,
        6,
        0,
        4,
    )
    assert holds.refund_reservation(event, rest, NOW) is None


def test_per_customer_limit_and_event_overrides() -> None:
    limited = HoldPolicy(max_seats_per_customer=4)
    event = make_event(20)
    holds.place_hold(event, request(2), limited, NOW, "r1", customer_seats=2)
    with pytest.raises(errors.CustomerLimitReached, match="already holds or has paid for 3"):
        holds.place_hold(event, request(2), limited, NOW, "r1", customer_seats=3)
    own = make_event(20, overrides=EventOverrides(max_seats_per_customer=1, hold_ttl_s=60))
    assert holds.customer_limited(own, POLICY)
    with pytest.raises(errors.CustomerLimitReached):
        holds.place_hold(own, request(2), POLICY, NOW, "r1")
    _, held, _ = holds.place_hold(
        make_event(20, overrides=EventOverrides(hold_ttl_s=60)), request(1), POLICY, NOW, "r1"
    )
    assert held.expires_at - held.created_at == timedelta(seconds=60)
    with pytest.raises(errors.InvalidField):
        holds.validate_overrides(EventOverrides(max_seats_per_hold=11), HoldPolicy())


def test_a_refusal_says_when_seats_in_checkout_come_free() -> None:
    event, held, _ = placed(quantity=3, capacity=3)
    with pytest.raises(errors.NotEnoughSeats) as refused:
        holds.place_hold(event, request(1), POLICY, NOW, "r2")
    explained = holds.explain_refusal(refused.value, held.expires_at, "Asia/Ho_Chi_Minh")
    assert "all 3 remaining seats are in checkout; the first hold lapses at 19:05:00" in str(
        explained
    )
    assert explained.metadata["next_hold_lapses_at"] == held.expires_at.isoformat()
