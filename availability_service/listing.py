"""Listing the view: which events a query matches, in what order, one page at a time.

Pure functions over ``projection.EventView``; no protobuf, no asyncio. The view hands its events
in and gets the page back. Page tokens (``slotlock.page_tokens``) carry the sort key of the last
event of a page and are bound to the filters they were issued for, so a token presented with
other filters is refused rather than quietly paging some other listing.
"""

from __future__ import annotations

import datetime
import heapq
import operator
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from availability_service import projection
from slotlock import errors, page_tokens

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

# (local date, local start time, code, event id): dates and times are ISO strings, so they sort
# as text; the event id makes the order total, which keyset paging needs.
SortKey = tuple[str, str, str, str]


def parse_date(raw: str, what: str) -> str | None:
    """``raw`` as a YYYY-MM-DD date, or None when empty (no bound)."""
    if not raw:
        return None
    if not _DATE.fullmatch(raw):
        raise errors.InvalidRequest(f"{what} {raw!r} is not a date in the form YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(raw)
    except ValueError:
        raise errors.InvalidRequest(f"{what} {raw!r} is not a valid date") from None
    return raw


def page_size_of(requested: int) -> int:
    """0 means the default; anything above the maximum is capped, not refused."""
    if requested < 0:
        raise errors.InvalidRequest(f"page_size {requested} is negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class Filters:
    """What a listing asks for; None means "any". Dates are validated YYYY-MM-DD strings
    (use ``Filters.of`` for raw input)."""

    from_date: str | None = None
    to_date: str | None = None
    status: projection.EventStatus | None = None
    badge: projection.Badge | None = None

    @classmethod
    def of(
        cls,
        from_date: str,
        to_date: str,
        status: projection.EventStatus | None = None,
        badge: projection.Badge | None = None,
    ) -> Filters:
        """Filters from raw date strings ("" = no bound), refusing malformed or reversed dates."""
        start = parse_date(from_date, "from_date")
        end = parse_date(to_date, "to_date")
        if start and end and start > end:
            raise errors.InvalidRequest(f"from_date {start} is after to_date {end}")
        return cls(start, end, status, badge)

    def matches(self, view: projection.EventView) -> bool:
        facts = view.facts
        return (
            (self.from_date is None or facts.local_date >= self.from_date)
            and (self.to_date is None or facts.local_date <= self.to_date)
            and (self.status is None or facts.status is self.status)
            and (self.badge is None or view.badge is self.badge)
        )

    def scope(self) -> str:
        """What a page token is bound to: the filters, not the page size (which may change)."""
        return page_tokens.scope_of(
            "availability", self.from_date, self.to_date, self.status, self.badge
        )


@dataclass(frozen=True, slots=True)
class Page:
    events: list[projection.EventView]
    next_page_token: str  # "" on the last page


def sort_key(view: projection.EventView) -> SortKey:
    facts = view.facts
    return (facts.local_date, facts.local_start_time, facts.code, facts.event_id)


def decode_after(page_token: str, filters: Filters) -> SortKey | None:
    """The sort key a page token resumes after, or None for the first page."""
    values = page_tokens.decode(page_token, filters.scope())
    if values is None:
        return None
    if len(values) != 4:
        raise errors.InvalidRequest("page_token: not a token this service issued; start again")
    return (values[0], values[1], values[2], values[3])


def list_page(
    views: Iterable[projection.EventView],
    filters: Filters,
    page_size: int,
    after: SortKey | None = None,
) -> Page:
    """The first ``page_size`` events matching ``filters`` after ``after``, in ``sort_key``
    order, and a token for the next page when more follow."""
    # One more than a page tells whether another page follows; nsmallest keeps it O(n log k).
    keyed = heapq.nsmallest(
        page_size + 1, _matching(views, filters, after), key=operator.itemgetter(0)
    )
    page = keyed[:page_size]
    more = len(keyed) > len(page) > 0
    token = page_tokens.encode(page[-1][0], filters.scope()) if more else ""
    return Page([view for _, view in page], token)


def _matching(
    views: Iterable[projection.EventView], filters: Filters, after: SortKey | None
) -> Iterator[tuple[SortKey, projection.EventView]]:
    for view in views:
        if filters.matches(view):
            key = sort_key(view)
            if after is None or key > after:
                yield key, view
