"""Page tokens round-trip, and refuse tokens from other filters or other hands."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotlock import page_tokens
from slotlock.errors import InvalidRequest

# The longest sort keys issued: a date, a time, an event code (at most 100 characters), an id.
SORT_KEYS = st.tuples(
    st.text(max_size=10), st.text(max_size=8), st.text(max_size=100), st.text(max_size=36)
)


@given(SORT_KEYS, st.text())
def test_round_trip(values: tuple[str, ...], filters: str) -> None:
    scope = page_tokens.scope_of(filters)
    assert page_tokens.decode(page_tokens.encode(values, scope), scope) == tuple(values)


def test_empty_token_is_the_first_page() -> None:
    assert page_tokens.decode("", page_tokens.scope_of("x")) is None


def test_token_for_other_filters_is_refused() -> None:
    token = page_tokens.encode(["2026-01-01", "a"], page_tokens.scope_of("SCHEDULED"))
    with pytest.raises(InvalidRequest, match="page_token"):
        page_tokens.decode(token, page_tokens.scope_of("CANCELLED"))


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"a": [1], "s": "x"}').decode(),
        "A" * 5000,
    ],
)
def test_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidRequest, match="page_token"):
        page_tokens.decode(token, "x")
