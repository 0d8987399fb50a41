"""The edge between the wire contract (``slotlock.v1``) and the pure projection types."""

from __future__ import annotations

from datetime import UTC

from availability_service import projection
from slotlock import errors
from slotlock.v1 import availability_pb2, catalog_pb2, changes_pb2

_STATUS_FROM_PROTO = {
    catalog_pb2.EVENT_STATUS_UNSPECIFIED: projection.EventStatus.UNSPECIFIED,
    catalog_pb2.EVENT_STATUS_SCHEDULED: projection.EventStatus.SCHEDULED,
    catalog_pb2.EVENT_STATUS_CANCELLED: projection.EventStatus.CANCELLED,
    catalog_pb2.EVENT_STATUS_SOLD_OUT: projection.EventStatus.SOLD_OUT,
}
STATUS_TO_PROTO = {status: value for value, status in _STATUS_FROM_PROTO.items()}
STATUS_FROM_PROTO: dict[int, projection.EventStatus] = {
    int(value): status for value, status in _STATUS_FROM_PROTO.items()
}

BADGE_TO_PROTO = {
    projection.Badge.AVAILABLE: availability_pb2.BADGE_AVAILABLE,
    projection.Badge.FEW_LEFT: availability_pb2.BADGE_FEW_LEFT,
    projection.Badge.ALMOST_FULL: availability_pb2.BADGE_ALMOST_FULL,
    projection.Badge.SOLD_OUT: availability_pb2.BADGE_SOLD_OUT,
}
BADGE_FROM_PROTO: dict[int, projection.Badge] = {int(v): k for k, v in BADGE_TO_PROTO.items()}


def status_filter(value: int) -> projection.EventStatus | None:
    """A listing's status filter: None when unset, refused when not a known status."""
    if value == catalog_pb2.EVENT_STATUS_UNSPECIFIED:
        return None
    if value not in STATUS_FROM_PROTO:
        raise errors.InvalidRequest(f"status {value} is not a known status")
    return STATUS_FROM_PROTO[value]


def badge_filter(value: int) -> projection.Badge | None:
    """A listing's badge filter: None when unset, refused when not a known badge."""
    if value == availability_pb2.BADGE_UNSPECIFIED:
        return None
    if value not in BADGE_FROM_PROTO:
        raise errors.InvalidRequest(f"badge {value} is not a known badge")
    return BADGE_FROM_PROTO[value]


def facts_from_event(event: catalog_pb2.Event) -> projection.EventFacts:
    return projection.EventFacts(
        event_id=event.id,
        code=event.code,
        experience_title=event.experience_title,
        local_date=event.local_date,
        local_start_time=event.local_start_time,
        time_zone=event.time_zone,
        starts_at=event.starts_at.ToDatetime(UTC) if event.HasField("starts_at") else None,
        capacity=event.capacity,
        paid=event.paid,
        pending=event.pending,
        # An unknown future status reads as UNSPECIFIED rather than breaking the feed.
        status=STATUS_FROM_PROTO.get(event.status, projection.EventStatus.UNSPECIFIED),
        experience_only_enabled=event.experience_only_enabled,
        dinner_price=_money_from(event.dinner_price) if event.HasField("dinner_price") else None,
        experience_only_price=(
            _money_from(event.experience_only_price)
            if event.HasField("experience_only_price")
            else None
        ),
        version=event.version,
    )


def parse_change(data: bytes) -> projection.EventFacts:
    """Decode one feed message (raises ``google.protobuf.message.DecodeError`` on garbage)."""
    change = changes_pb2.EventChange()
    change.ParseFromString(data)
    return facts_from_event(change.event)


def to_proto(view: projection.EventView) -> availability_pb2.EventAvailability:
    facts = view.facts
    message = availability_pb2.EventAvailability(
        event_id=facts.event_id,
        code=facts.code,
        experience_title=facts.experience_title,
        local_date=facts.local_date,
        local_start_time=facts.local_start_time,
        time_zone=facts.time_zone,
        capacity=facts.capacity,
        paid=facts.paid,
        pending=facts.pending,
        available=view.available,
        status=STATUS_TO_PROTO[facts.status],
        experience_only_enabled=facts.experience_only_enabled,
        badge=BADGE_TO_PROTO[view.badge],
        version=facts.version,
    )
    if facts.starts_at is not None:
        message.starts_at.FromDatetime(facts.starts_at)
    if facts.dinner_price is not None:
        message.dinner_price.amount = facts.dinner_price.amount
        message.dinner_price.currency = facts.dinner_price.currency
    if facts.experience_only_price is not None:
        message.experience_only_price.amount = facts.experience_only_price.amount
        message.experience_only_price.currency = facts.experience_only_price.currency
    return message


def _money_from(money: catalog_pb2.Money) -> projection.Money:
    return projection.Money(amount=money.amount, currency=money.currency)
