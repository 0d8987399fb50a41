"""Small helpers shared by the reservation integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import psycopg

from slotlock.v1 import catalog_pb2, reservation_pb2


def event_request(
    code: str, capacity: int = 10, **fields: Any
) -> reservation_pb2.UpsertEventRequest:
    values: dict[str, Any] = {
        "code": code,
        "experience_title": "Saigon Dinner Show",
        "local_date": (date.today() + timedelta(days=30)).isoformat(),
        "local_start_time": "19:00",
        "capacity": capacity,
        "dinner_price": catalog_pb2.Money(amount=1_200_000, currency="VND"),
        "experience_only_price": catalog_pb2.Money(amount=600_000, currency="VND"),
    }
    values.update(fields)
    return reservation_pb2.UpsertEventRequest(**values)


def snapshot(database_url: str) -> list[Any]:
    """Everything a refused request must leave untouched."""
    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT id, capacity, paid, pending, status, version FROM events ORDER BY id"
        ).fetchall()
        reservations = conn.execute(
            "SELECT id, status, updated_at, provider_order_id, payment_reference"
            " FROM reservations ORDER BY id"
        ).fetchall()
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return [events, reservations, outbox]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
