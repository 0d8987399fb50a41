"""AvailabilityService over grpc.aio: protobuf in, ``AvailabilityView`` calls, protobuf out.

Errors raised here leave through the server's interceptor (``slotlock.grpc_errors``): one mapping
of categories to status codes for every RPC, never UNKNOWN.
"""

from __future__ import annotations

import grpc
from google.protobuf import message_factory

from availability_service import convert, listing
from availability_service.view import AvailabilityView, Message
from slotlock.ids import parse_uuid
from slotlock.v1 import availability_pb2

SERVICE = availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"]

# Methods whose responses are bytes serialized once per change (``Update.payload``) and shared
# by every stream, instead of a message serialized again for each watcher.
PRE_SERIALIZED = frozenset({"WatchAvailability"})


class AvailabilityServicer:
    """One method per RPC of ``SERVICE``; ``method_handlers`` checks that none is missing."""

    def __init__(self, view: AvailabilityView) -> None:
        self.view = view

    async def GetEventAvailability(
        self,
        request: availability_pb2.GetEventAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> Message:
        return self.view.get(parse_uuid(request.event_id, "event_id")).message

    async def ListAvailability(
        self,
        request: availability_pb2.ListAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> availability_pb2.ListAvailabilityResponse:
        filters = listing.Filters.of(
            request.from_date,
            request.to_date,
            status=convert.status_filter(request.status),
            badge=convert.badge_filter(request.badge),
        )
        events, token = self.view.list_events(filters, request.page_size, request.page_token)
        return availability_pb2.ListAvailabilityResponse(events=events, next_page_token=token)

    async def WatchAvailability(
        self,
        request: availability_pb2.WatchAvailabilityRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Writes with ``context.write`` rather than yielding: a coroutine handler is wrapped by
        the interceptors once per call (``slotlock.grpc_errors``, ``slotlock.auth``), where an
        async generator would pass every message up through each wrapper's generator, a cost
        paid once per watcher per change."""
        event_ids = [parse_uuid(raw, "event_ids entry") for raw in request.event_ids]
        known = {
            parse_uuid(raw, "known_versions key"): version
            for raw, version in request.known_versions.items()
        }
        watcher = self.view.watch(event_ids or None, known)
        write = context.write
        try:
            while True:
                for update in await watcher.next_batch():
                    await write(update.payload)
        finally:
            self.view.unwatch(watcher)


def method_handlers(servicer: AvailabilityServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The handler of every RPC in the service descriptor, built the way the generated
    ``add_AvailabilityServiceServicer_to_server`` builds them (the generated request classes'
    ``FromString``, the response classes' ``SerializeToString``), except that the methods in
    ``PRE_SERIALIZED`` send their bytes as they are.

    Why not the generated function: it serializes each response itself, so the watch stream
    would have to yield messages, and every update would be serialized once per watcher
    instead of once (the design keeps one serialization per change). Why not a hand-written
    table: a new RPC in the .proto would go unanswered (UNIMPLEMENTED) without anyone noticing.
    Built from the descriptor, an RPC without a servicer method fails at start-up (and in
    ``tests/unit/test_availability_servicer.py``).
    """
    unknown = PRE_SERIALIZED - {method.name for method in SERVICE.methods}
    if unknown:
        raise TypeError(f"{SERVICE.full_name} has no RPC {sorted(unknown)}")
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} has no method for RPC {method.name}")
        if method.client_streaming:
            raise TypeError(f"{method.name}: client-streaming RPCs are not supported here")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        serialize = (
            _already_serialized
            if method.name in PRE_SERIALIZED
            else response_class.SerializeToString
        )
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behaviour,
            request_deserializer=request_class.FromString,
            response_serializer=serialize,
        )
    return handlers


def add_to_server(servicer: AvailabilityServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` (see ``method_handlers`` for why not the generated
    ``add_AvailabilityServiceServicer_to_server``)."""
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _already_serialized(payload: bytes) -> bytes:
    return payload
