"""Listing the availability view: filters, the order, keyset pages, and page tokens bound to the
filters they were issued for. Pure: no server, no feed."""

from __future__ import annotations

import pytest

from availability_service import listing
from availability_service.projection import (
    Badge,
    BadgePolicy,
    EventFacts,
    EventStatus,
    EventView,
    view_of,
)
from slotlock import page_tokens
from slotlock.errors import InvalidRequest

POLICY = BadgePolicy()


def event(
    event_id: str,
    local_date: str,
    *,
    start: str = "19:00",
    code: str = "DS",
    paid: int = 0,
    status: EventStatus = EventStatus.SCHEDULED,
) -> EventView:
    return view_of(
        EventFacts(
            event_id=event_id,
            code=code,
            experience_title="Dinner in the dark",
            local_date=local_date,
            local_start_time=start,
            time_zone="Asia/Ho_Chi_Minh",
            starts_at=None,
            capacity=40,
            paid=paid,
            pending=0,
            status=status,
            experience_only_enabled=False,
            dinner_price=None,
            experience_only_price=None,
            version=1,
        ),
        POLICY,
    )


DECEMBER = [
    event(f"e{day}", f"2026-12-0{day}", paid=38 if day % 2 else 0) for day in range(1, 8)
] + [event("e-cancelled", "2026-12-03", status=EventStatus.CANCELLED)]


def all_pages(filters: listing.Filters, page_size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        after = listing.decode_after(token, filters)
        page = listing.list_page(reversed(DECEMBER), filters, page_size, after)
        pages.append([view.event_id for view in page.events])
        token = page.next_page_token
        if not token:
            return pages


def test_order_is_date_then_start_time_then_code_then_id() -> None:
    views = [
        event("b", "2026-12-02", start="19:00"),
        event("a", "2026-12-02", start="19:00"),
        event("z", "2026-12-02", start="18:00", code="ZZ"),
        event("y", "2026-12-02", start="18:00", code="AA"),
        event("x", "2026-12-01", start="21:00"),
    ]
    page = listing.list_page(views, listing.Filters(), page_size=10)
    assert [view.event_id for view in page.events] == ["x", "y", "z", "a", "b"]
    assert page.next_page_token == ""


def test_pages_cover_every_match_once_in_order() -> None:
    filters = listing.Filters.of("2026-12-02", "2026-12-06")
    pages = all_pages(filters, page_size=2)
    assert [len(page) for page in pages] == [2, 2, 2]
    flat = [event_id for page in pages for event_id in page]
    assert flat == ["e2", "e-cancelled", "e3", "e4", "e5", "e6"]


def test_a_last_page_that_is_exactly_full_has_no_token() -> None:
    pages = all_pages(listing.Filters(), page_size=4)
    assert [len(page) for page in pages] == [4, 4]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (listing.Filters(badge=Badge.FEW_LEFT), ["e1", "e3", "e5", "e7"]),
        (listing.Filters(status=EventStatus.CANCELLED), ["e-cancelled"]),
        (listing.Filters.of("2026-12-07", ""), ["e7"]),
        (listing.Filters.of("", "2026-12-01"), ["e1"]),
        (listing.Filters.of("2026-12-04", "2026-12-04"), ["e4"]),
    ],
)
def test_filters(filters: listing.Filters, expected: list[str]) -> None:
    page = listing.list_page(DECEMBER, filters, page_size=50)
    assert [view.event_id for view in page.events] == expected


def test_a_token_only_fits_the_filters_it_was_issued_for() -> None:
    first = listing.list_page(DECEMBER, listing.Filters(), page_size=1)
    assert first.next_page_token
    assert listing.decode_after(first.next_page_token, listing.Filters()) is not None
    for other in (
        listing.Filters.of("2026-12-01", ""),
        listing.Filters(status=EventStatus.SCHEDULED),
        listing.Filters(badge=Badge.AVAILABLE),
    ):
        with pytest.raises(InvalidRequest, match="page_token"):
            listing.decode_after(first.next_page_token, other)


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        page_tokens.encode(["2026-12-01", "19:00", "DS"], listing.Filters().scope()),  # short
        page_tokens.encode(["2026-12-01", "19:00", "DS", "e1"], page_tokens.scope_of("holds")),
    ],
)
def test_tokens_this_listing_did_not_issue_are_refused(token: str) -> None:
    with pytest.raises(InvalidRequest, match="page_token"):
        listing.decode_after(token, listing.Filters())


def test_empty_token_is_the_first_page() -> None:
    assert listing.decode_after("", listing.Filters()) is None


@pytest.mark.parametrize(
    ("from_date", "to_date", "complaint"),
    [
        ("24/12/2026", "", "YYYY-MM-DD"),
        ("2026-02-30", "", "not a valid date"),
        ("", "2026-13-01", "not a valid date"),
        ("2026-12-25", "2026-12-24", "after to_date"),
    ],
)
def test_bad_dates_are_refused(from_date: str, to_date: str, complaint: str) -> None:
    with pytest.raises(InvalidRequest, match=complaint):
        listing.Filters.of(from_date, to_date)


def test_page_size_defaults_and_caps() -> None:
    assert listing.page_size_of(0) == listing.DEFAULT_PAGE_SIZE
    assert listing.page_size_of(7) == 7
    assert listing.page_size_of(10_000) == listing.MAX_PAGE_SIZE
    with pytest.raises(InvalidRequest, match="negative"):
        listing.page_size_of(-1)


def test_the_page_size_is_not_part_of_the_scope() -> None:
    first = listing.list_page(DECEMBER, listing.Filters(), page_size=1)
    after = listing.decode_after(first.next_page_token, listing.Filters())
    rest = listing.list_page(DECEMBER, listing.Filters(), page_size=50, after=after)
    assert len(rest.events) == len(DECEMBER) - 1
