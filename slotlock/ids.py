"""Ids on the wire are UUIDs; both services parse them the same way at their edge."""

from __future__ import annotations

import uuid

from slotlock.errors import InvalidRequest


def parse_uuid(value: str, field: str) -> str:
    """The canonical form of a UUID id, or InvalidRequest naming ``field``."""
    if not value:
        raise InvalidRequest(f"{field}: is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRequest(f"{field}: not a valid id: {value[:60]!r}") from None
