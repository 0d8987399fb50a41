"""AvailabilityService over grpc.aio. Every method is wrapped by ``slotlock.grpc_errors`` so
errors leave with one mapping of categories to status codes (never UNKNOWN)."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import heapq
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from availability_service import convert, projection
from availability_service.view import AvailabilityView, Message
from slotlock import errors, grpc_errors
from slotlock.ids import parse_uuid
from slotlock.v1 import availability_pb2, catalog_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_WATCHED_IDS = 10_000
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

SortKey = tuple[str, str, str, str]


def parse_date(raw: str, what: str) -> str | None:
    if not raw:
        return None
    if not _DATE.fullmatch(raw):
        raise errors.InvalidRequest(f"{what} {raw!r} is not a date in the form YYYY-MM-DD")
    try:
        datetime.date.fromisoformat(raw)
    except ValueError:
        raise errors.InvalidRequest(f"{what} {raw!r} is not a valid date") from None
    return raw


@dataclass(frozen=True)
class ListFilter:
    from_date: str | None
    to_date: str | None
    status: projection.EventStatus | None
    badge: projection.Badge | None
    page_size: int

    @classmethod
    def from_request(cls, request: availability_pb2.ListAvailabilityRequest) -> ListFilter:
        from_date = parse_date(request.from_date, "from_date")
        to_date = parse_date(request.to_date, "to_date")
        if from_date and to_date and from_date > to_date:
            raise errors.InvalidRequest(f"from_date {from_date} is after to_date {to_date}")
        status: projection.EventStatus | None = None
        if request.status != catalog_pb2.EVENT_STATUS_UNSPECIFIED:
            if request.status not in convert.STATUS_FROM_PROTO:
                raise errors.InvalidRequest(f"status {request.status} is not a known status")
            status = convert.STATUS_FROM_PROTO[request.status]
        badge: projection.Badge | None = None
        if request.badge != availability_pb2.BADGE_UNSPECIFIED:
            if request.badge not in convert.BADGE_FROM_PROTO:
                raise errors.InvalidRequest(f"badge {request.badge} is not a known badge")
            badge = convert.BADGE_FROM_PROTO[request.badge]
        if request.page_size < 0:
            raise errors.InvalidRequest(f"page_size {request.page_size} is negative")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return cls(from_date, to_date, status, badge, page_size)

    def matches(self, view: projection.EventView) -> bool:
        facts = view.facts
        return (
            (self.from_date is None or facts.local_date >= self.from_date)
            and (self.to_date is None or facts.local_date <= self.to_date)
            and (self.status is None or facts.status is self.status)
            and (self.badge is None or view.badge is self.badge)
        )

    def fingerprint(self) -> str:
        """Ties a page token to the filters it was issued for (page size may change)."""
        text = f"{self.from_date}|{self.to_date}|{self.status}|{self.badge}"
        return hashlib.blake2s(text.encode(), digest_size=6).hexdigest()


def sort_key(view: projection.EventView) -> SortKey:
    facts = view.facts
    return (facts.local_date, facts.local_start_time, facts.code, facts.event_id)


def encode_page_token(after: SortKey, fingerprint: str) -> str:
    raw = json.dumps({"a": list(after), "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> SortKey | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after = data["a"]
        if (
            data["f"] != fingerprint
            or not isinstance(after, list)
            or len(after) != 4
            or not all(isinstance(part, str) for part in after)
        ):
            raise ValueError("token does not fit these filters")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise errors.InvalidRequest(
            "page_token is malformed or was issued for other filters"
        ) from None
    return (after[0], after[1], after[2], after[3])


def _already_serialized(payload: bytes) -> bytes:
    return payload


def add_to_server(servicer: AvailabilityServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_AvailabilityServiceServicer_to_server``, except that the watch
    stream sends bytes serialized once per change (``Update.payload``), not once per watcher."""
    handlers = {
        "GetEventAvailability": grpc.unary_unary_rpc_method_handler(
            servicer.GetEventAvailability,
            request_deserializer=availability_pb2.GetEventAvailabilityRequest.FromString,
            response_serializer=availability_pb2.EventAvailability.SerializeToString,
        ),
        "ListAvailability": grpc.unary_unary_rpc_method_handler(
            servicer.ListAvailability,
            request_deserializer=availability_pb2.ListAvailabilityRequest.FromString,
            response_serializer=availability_pb2.ListAvailabilityResponse.SerializeToString,
        ),
        "WatchAvailability": grpc.unary_stream_rpc_method_handler(
            servicer.WatchAvailability,
            request_deserializer=availability_pb2.WatchAvailabilityRequest.FromString,
            response_serializer=_already_serialized,
        ),
    }
    name = availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class AvailabilityServicer:
    """The three RPCs. Not a subclass of the generated base class: the watch stream yields
    pre-serialized bytes (see ``add_to_server``), which that base class's typing does not allow."""

    def __init__(self, view: AvailabilityView) -> None:
        self.view = view

    @grpc_errors.mapped
    async def GetEventAvailability(
        self,
        request: availability_pb2.GetEventAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> Message:
        event_id = parse_uuid(request.event_id, "event_id")
        return self.view.get(event_id).message

    @grpc_errors.mapped
    async def ListAvailability(
        self,
        request: availability_pb2.ListAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> availability_pb2.ListAvailabilityResponse:
        filters = ListFilter.from_request(request)
        fingerprint = filters.fingerprint()
        after = decode_page_token(request.page_token, fingerprint)
        self.view.require_ready()
        # One more than a page tells whether another page follows; nsmallest keeps it O(n log k).
        keyed = heapq.nsmallest(
            filters.page_size + 1,
            (
                (sort_key(view), view.event_id)
                for view in self.view.views.values()
                if filters.matches(view) and (after is None or sort_key(view) > after)
            ),
        )
        page = keyed[: filters.page_size]
        response = availability_pb2.ListAvailabilityResponse(
            events=[self.view.messages[event_id].message for _, event_id in page]
        )
        if len(keyed) > filters.page_size:
            response.next_page_token = encode_page_token(page[-1][0], fingerprint)
        return response

    @grpc_errors.mapped_stream
    async def WatchAvailability(
        self,
        request: availability_pb2.WatchAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        if len(request.event_ids) > MAX_WATCHED_IDS:
            raise errors.InvalidRequest(f"at most {MAX_WATCHED_IDS} event_ids per watch")
        event_ids = [parse_uuid(raw, "event_ids entry") for raw in request.event_ids]
        known: dict[str, int] = {}
        for raw, version in request.known_versions.items():
            known[parse_uuid(raw, "known_versions key")] = version
        watcher = self.view.watch(event_ids or None, known)
        try:
            while True:
                for update in await watcher.next_batch():
                    yield update.payload
        finally:
            self.view.hub.unregister(watcher)
