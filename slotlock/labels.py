"""Short names of slotlock.v1 enum values, for clients that show them (gateway, CLI)."""

from __future__ import annotations

from typing import Any


def short_name(enum: Any, value: int, default: str) -> str:
    """``BADGE_FEW_LEFT`` -> ``"FEW_LEFT"``, read from the generated enum so no client keeps a
    copy of the names. ``default`` for UNSPECIFIED and for values this build does not know."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return default
    short = name.removeprefix(enum.Name(0).removesuffix("UNSPECIFIED"))
    return default if short == "UNSPECIFIED" else short
