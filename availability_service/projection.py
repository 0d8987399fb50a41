"""The pure core of the availability side: an event's facts, its view (available seats, badge),
and the rule for applying a change. No asyncio, no I/O, no protobuf: everything else calls these.

A change carries the event's whole state after it, so applying one is "keep it if its version is
newer" (``slotlock.conflation.is_newer``, the one copy of that rule); re-delivered or stale
messages are ignored, which makes the consumer idempotent.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from slotlock.conflation import is_newer


class Badge(enum.Enum):
    """What a listing shows next to an event."""

    AVAILABLE = "available"
    FEW_LEFT = "few_left"
    ALMOST_FULL = "almost_full"  # few left and someone is paying right now
    SOLD_OUT = "sold_out"


class EventStatus(enum.Enum):
    UNSPECIFIED = "unspecified"
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"
    SOLD_OUT = "sold_out"


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class EventFacts:
    """The event's state as the reservation service published it (one change's payload)."""

    event_id: str
    code: str
    experience_title: str
    local_date: str
    local_start_time: str
    time_zone: str
    starts_at: datetime | None
    capacity: int
    paid: int
    pending: int
    status: EventStatus
    experience_only_enabled: bool
    dinner_price: Money | None
    experience_only_price: Money | None
    version: int


@dataclass(frozen=True, slots=True)
class EventView:
    """What the service serves: the facts plus the figures derived from them."""

    facts: EventFacts
    available: int
    badge: Badge

    @property
    def event_id(self) -> str:
        return self.facts.event_id

    @property
    def version(self) -> int:
        return self.facts.version


@dataclass(frozen=True, slots=True)
class BadgePolicy:
    """Thresholds for FEW_LEFT / ALMOST_FULL: at most ``few_left`` seats, or at most
    ``ceil(capacity * share)`` seats. ``share`` is taken as the decimal it is written as, so 7%
    of 100 seats is 7 (float maths gives 7.000000000000001, whose ceiling is 8)."""

    few_left: int = 5
    share: float = 0.2

    def __post_init__(self) -> None:
        if self.few_left < 0:
            raise ValueError(f"few_left must be >= 0, got {self.few_left}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {self.share}")


@functools.lru_cache(maxsize=64)
def _share_ratio(share: float) -> tuple[int, int]:
    ratio = Fraction(repr(share))
    return ratio.numerator, ratio.denominator


def available_seats(capacity: int, paid: int, pending: int) -> int:
    return max(0, capacity - paid - pending)


def share_threshold(capacity: int, policy: BadgePolicy) -> int:
    """``ceil(capacity * share)`` in exact arithmetic."""
    numerator, denominator = _share_ratio(policy.share)
    return -(-max(0, capacity) * numerator // denominator)


def badge_for(capacity: int, paid: int, pending: int, policy: BadgePolicy) -> Badge:
    available = available_seats(capacity, paid, pending)
    if available == 0:
        return Badge.SOLD_OUT
    if available <= policy.few_left or available <= share_threshold(capacity, policy):
        return Badge.ALMOST_FULL if pending > 0 else Badge.FEW_LEFT
    return Badge.AVAILABLE


def view_of(facts: EventFacts, policy: BadgePolicy) -> EventView:
    return EventView(
        facts=facts,
        available=available_seats(facts.capacity, facts.paid, facts.pending),
        badge=badge_for(facts.capacity, facts.paid, facts.pending, policy),
    )


def apply_change(
    current: EventView | Mapping[str, EventView] | None,
    incoming: EventFacts,
    policy: BadgePolicy,
) -> EventView | None:
    """The new view of ``incoming``'s event, or None when its version is not newer than what is
    held (a duplicate, a re-delivery after a resync, or a stale message)."""
    if isinstance(current, Mapping):
        current = current.get(incoming.event_id)
    if current is not None and not is_newer(incoming.version, current.version):
        return None
    return view_of(incoming, policy)
