"""The badge rule at every edge: sold out, the few_left threshold (5), the ceil(capacity x share)
threshold, pending 0 vs > 0, capacity 0, and float-free rounding of the share."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_service.projection import Badge, BadgePolicy, badge_for, share_threshold

POLICY = BadgePolicy()  # few_left=5, share=0.2

A, F, AF, S = Badge.AVAILABLE, Badge.FEW_LEFT, Badge.ALMOST_FULL, Badge.SOLD_OUT


@pytest.mark.parametrize(
    ("capacity", "paid", "pending", "badge"),
    [
        # capacity 0 and over-committed counters are sold out
        (0, 0, 0, S),
        (10, 10, 0, S),
        (10, 4, 6, S),
        (10, 8, 5, S),  # available clamps at 0
        # few_left = 5 edge (capacity 10 -> share threshold 2, so 5 is the binding one)
        (10, 5, 0, F),  # available 5
        (10, 4, 0, A),  # available 6
        (10, 4, 1, AF),  # available 5, someone paying
        (10, 3, 1, A),  # available 6 even with pending
        (10, 9, 0, F),  # available 1
        (10, 8, 1, AF),  # available 1, pending
        # ceil(20%) edge where it exceeds few_left: capacity 100 -> threshold 20
        (100, 80, 0, F),  # available 20
        (100, 79, 0, A),  # available 21
        (100, 70, 10, AF),  # available 20 with pending
        (100, 69, 10, A),  # available 21 with pending
        # ceil rounds up: capacity 101 -> 20.2 -> 21
        (101, 80, 0, F),  # available 21
        (101, 79, 0, A),  # available 22
        # capacity 15 -> share threshold 3, so few_left (5) binds
        (15, 12, 0, F),  # available 3
        (15, 9, 0, A),  # available 6 > max(5, 3)
        (15, 10, 0, F),  # available 5 = few_left
        # capacity 1
        (1, 0, 0, F),
        (1, 0, 1, S),
        (1, 1, 0, S),
        # big capacities
        (1000, 800, 0, F),  # available 200 = ceil(200)
        (1000, 799, 0, A),
        (1000, 0, 799, A),  # pending alone does not make a badge
        (1000, 0, 800, AF),
    ],
)
def test_badge_table(capacity: int, paid: int, pending: int, badge: Badge) -> None:
    assert badge_for(capacity, paid, pending, POLICY) is badge


def test_share_threshold_is_exact_decimal() -> None:
    assert math.ceil(100 * 0.07) == 8  # the float trap the rule avoids
    assert share_threshold(100, BadgePolicy(share=0.07)) == 7
    assert share_threshold(15, POLICY) == 3
    assert share_threshold(101, POLICY) == 21
    assert share_threshold(0, POLICY) == 0
    assert share_threshold(7, BadgePolicy(share=0.0)) == 0
    assert share_threshold(7, BadgePolicy(share=1.0)) == 7


def test_custom_policy_thresholds() -> None:
    policy = BadgePolicy(few_left=0, share=0.5)
    assert badge_for(10, 5, 0, policy) is F  # 5 <= ceil(5)
    assert badge_for(10, 4, 0, policy) is A
    assert badge_for(10, 4, 2, BadgePolicy(few_left=0, share=0.0)) is A  # no threshold at all


@pytest.mark.parametrize(("few_left", "share"), [(-1, 0.2), (5, -0.1), (5, 1.5)])
def test_policy_rejects_nonsense(few_left: int, share: float) -> None:
    with pytest.raises(ValueError):
        BadgePolicy(few_left=few_left, share=share)


counts = st.integers(min_value=0, max_value=10_000)


@given(capacity=counts, paid=counts, pending=counts)
def test_badge_matches_the_rule_as_written(capacity: int, paid: int, pending: int) -> None:
    available = max(0, capacity - paid - pending)
    if available == 0:
        expected = S
    elif available <= 5 or available <= math.ceil(capacity * 2 / 10):  # exact for integers
        expected = AF if pending > 0 else F
    else:
        expected = A
    assert badge_for(capacity, paid, pending, POLICY) is expected


@given(capacity=st.integers(1, 10_000), paid=counts, pending=st.integers(1, 10_000))
def test_pending_never_shows_few_left(capacity: int, paid: int, pending: int) -> None:
    assert badge_for(capacity, paid, pending, POLICY) is not F


@given(capacity=counts, paid=counts, pending=counts, more=st.integers(1, 100))
def test_more_seats_taken_never_improves_the_badge(
    capacity: int, paid: int, pending: int, more: int
) -> None:
    rank = {A: 0, F: 1, AF: 1, S: 2}
    before = badge_for(capacity, paid, pending, POLICY)
    after = badge_for(capacity, paid + more, pending, POLICY)
    assert rank[after] >= rank[before]
