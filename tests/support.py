"""What tests share besides fixtures: types of fixture values and small checks. Tests import from
here, never from a conftest (pytest loads conftests itself; importing one runs it twice)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from reservation_service.server import ReservationServer

# The ``start_reservation`` fixture: ``await start_reservation(hold_ttl_s=1)``.
StartReservation = Callable[..., Awaitable[ReservationServer]]


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
