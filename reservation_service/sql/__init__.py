"""SQL next to the code that runs it: named blocks (``-- name: x``) in .sql files, and numbered
migrations in ``migrations/``."""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@functools.cache
def queries(filename: str) -> dict[str, str]:
    """The named queries of ``filename`` in this folder: {name: sql}."""
    text = resources.files(__name__).joinpath(filename).read_text()
    parts = _NAME.split(text)
    return {name: sql.strip() for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration, in order."""
    folder = resources.files(__name__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)
