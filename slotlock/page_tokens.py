"""Page tokens: opaque to clients, bound to the filters they were issued for.

A token carries the sort key of the last row of the page it ends (the caller decides what that
is) and a short fingerprint of the request's filters (its *scope*). A token presented with other
filters, or one this service did not issue, is refused with INVALID_ARGUMENT instead of quietly
returning a page of some other listing. Decoding into typed values (dates, UUIDs) stays with the
caller, so that nothing raw reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence

from slotlock.errors import InvalidRequest

MAX_TOKEN_LENGTH = 1024


def scope_of(*parts: object) -> str:
    """A short fingerprint of the filters a page token belongs to."""
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return hashlib.blake2s(text.encode(), digest_size=6).hexdigest()


def encode(values: Sequence[str], scope: str) -> str:
    """A token for the page after ``values``. UTF-8 rather than JSON escapes keeps tokens short:
    a sort key of the longest event code still fits the contract's page_token bound."""
    raw = json.dumps({"a": list(values), "s": scope}, separators=(",", ":"), ensure_ascii=False)
    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"a page token of {len(token)} characters: sort keys are too long")
    return token


def decode(token: str, scope: str, field: str = "page_token") -> tuple[str, ...] | None:
    """The values ``encode`` put in ``token``, or None for the first page (empty token)."""
    if not token:
        return None
    refused = InvalidRequest(
        f"{field}: not a token this service issued for these filters; "
        "start again from the first page"
    )
    if len(token) > MAX_TOKEN_LENGTH:
        raise refused
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise refused from None
    if not isinstance(data, dict) or data.get("s") != scope:
        raise refused
    values = data.get("a")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise refused
    return tuple(values)
