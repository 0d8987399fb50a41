"""Applying changes: newer versions win, duplicates and stale ones are ignored, the view's
derived figures follow the facts."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given
from hypothesis import strategies as st

from availability_service.projection import (
    Badge,
    BadgePolicy,
    EventFacts,
    EventStatus,
    EventView,
    Money,
    apply_change,
    view_of,
)

POLICY = BadgePolicy()


def facts(version: int, *, event_id: str = "e1", paid: int = 0, pending: int = 0) -> EventFacts:
    return EventFacts(
        event_id=event_id,
        code="DS-2026-12-24-1900",
        experience_title="Dinner in the dark",
        local_date="2026-12-24",
        local_start_time="19:00",
        time_zone="Asia/Ho_Chi_Minh",
        starts_at=None,
        capacity=40,
        paid=paid,
        pending=pending,
        status=EventStatus.SCHEDULED,
        experience_only_enabled=False,
        dinner_price=Money(1_500_000, "VND"),
        experience_only_price=None,
        version=version,
    )


def test_first_change_is_kept() -> None:
    view = apply_change(None, facts(1, pending=2), POLICY)
    assert view is not None
    assert (view.available, view.badge, view.version) == (38, Badge.AVAILABLE, 1)


def test_newer_version_replaces() -> None:
    current = view_of(facts(1), POLICY)
    view = apply_change(current, facts(2, paid=35, pending=1), POLICY)
    assert view is not None
    assert (view.available, view.badge) == (4, Badge.ALMOST_FULL)


def test_duplicate_and_stale_are_ignored() -> None:
    current = view_of(facts(5), POLICY)
    assert apply_change(current, facts(5, paid=3), POLICY) is None
    assert apply_change(current, facts(4, paid=3), POLICY) is None


def test_mapping_lookup_by_event_id() -> None:
    views = {"e1": view_of(facts(3), POLICY)}
    assert apply_change(views, facts(2), POLICY) is None
    other = apply_change(views, facts(1, event_id="e2"), POLICY)
    assert other is not None and other.event_id == "e2"


def test_views_are_frozen() -> None:
    view = view_of(facts(1), POLICY)
    try:
        view.available = 3  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("EventView must be immutable")


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=60), st.randoms())
def test_any_delivery_order_converges_to_the_highest_version(
    versions: list[int], rnd: random.Random
) -> None:
    """Re-deliveries, duplicates and reordering (a resync replays the last message) all end at
    the newest state, and the held version never goes backwards."""
    deliveries = [facts(v, paid=v % 40) for v in versions]
    rnd.shuffle(deliveries)
    current: EventView | None = None
    seen: list[int] = []
    for incoming in deliveries:
        new = apply_change(current, incoming, POLICY)
        if new is not None:
            current = new
            seen.append(new.version)
    assert current is not None
    assert current.version == max(versions)
    assert current.facts.paid == max(versions) % 40
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
