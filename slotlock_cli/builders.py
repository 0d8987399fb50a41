"""Events and changes as tests, benchmarks and `slotlock dev` make them up.

One place for the made-up data, so a field added to the catalog gets a sensible value everywhere
at once, and a test or benchmark states only what matters to it (a capacity, a code) and takes
the rest from here. Anything a caller passes as ``**fields`` overrides what is built here.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2

CURRENCY = "VND"
TITLE = "Saigon Dinner Show"
DINNER_PRICE = 1_500_000
EXPERIENCE_ONLY_PRICE = 600_000


def money(amount: int | catalog_pb2.Money) -> catalog_pb2.Money:
    """An amount in the one currency the catalog sells in (a Money passes through)."""
    if isinstance(amount, catalog_pb2.Money):
        return amount
    return catalog_pb2.Money(amount=amount, currency=CURRENCY)


def event_request(
    code: str,
    capacity: int = 10,
    *,
    title: str = TITLE,
    days_ahead: int = 30,
    start_time: str = "19:00",
    dinner_price: int | catalog_pb2.Money = DINNER_PRICE,
    experience_only_price: int | catalog_pb2.Money | None = EXPERIENCE_ONLY_PRICE,
    **fields: Any,
) -> reservation_pb2.UpsertEventRequest:
    """An upcoming event, ``days_ahead`` from today. The experience-only price is set (not
    enabled) by default, so enabling it is one field; ``None`` leaves it out."""
    values: dict[str, Any] = {
        "code": code,
        "experience_title": title,
        "local_date": (date.today() + timedelta(days=days_ahead)).isoformat(),
        "local_start_time": start_time,
        "capacity": capacity,
        "dinner_price": money(dinner_price),
    }
    if experience_only_price is not None:
        values["experience_only_price"] = money(experience_only_price)
    values.update(fields)
    return reservation_pb2.UpsertEventRequest(**values)


def event_snapshot(
    event_id: str,
    *,
    capacity: int,
    version: int,
    pending: int = 0,
    paid: int = 0,
    code: str | None = None,
    title: str = "Dinner in the dark",
    local_date: str = "2026-12-24",
    start_time: str = "19:00",
    **fields: Any,
) -> catalog_pb2.Event:
    """An event's state as the reservation service publishes it: ``available`` follows from the
    counters, as it does there."""
    return catalog_pb2.Event(
        id=event_id,
        code=code if code is not None else f"BENCH-{event_id[:8]}",
        experience_title=title,
        local_date=local_date,
        local_start_time=start_time,
        capacity=capacity,
        paid=paid,
        pending=pending,
        available=capacity - paid - pending,
        status=catalog_pb2.EVENT_STATUS_SCHEDULED,
        version=version,
        **fields,
    )


def event_change(
    event: catalog_pb2.Event,
    change_id: int,
    change_type: changes_pb2.ChangeType.ValueType = changes_pb2.CHANGE_TYPE_HOLD_CREATED,
) -> changes_pb2.EventChange:
    """The feed message the outbox relay would publish for ``event`` (a hold, by default)."""
    return changes_pb2.EventChange(change_id=change_id, type=change_type, event=event)
