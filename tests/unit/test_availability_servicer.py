"""The availability servicer's registration: every RPC in the contract has a handler and a
servicer method (a new RPC without one fails here and at start-up, never silently), and the
watch stream sends its pre-serialized bytes untouched. Also the servicer's conversions, on a
view held in memory (no server, no feed)."""

from __future__ import annotations

import grpc
import pytest

from availability_service import servicer as servicer_module
from availability_service.projection import BadgePolicy, EventFacts, EventStatus
from availability_service.servicer import AvailabilityServicer, method_handlers
from availability_service.view import AvailabilityView
from slotlock.v1 import availability_pb2

SERVICE = availability_pb2.DESCRIPTOR.services_by_name["AvailabilityService"]


def ready_view(*days: int) -> AvailabilityView:
    view = AvailabilityView(BadgePolicy(), max_watchers=10)
    for day in days:
        view.apply(
            EventFacts(
                event_id=f"00000000-0000-4000-8000-00000000000{day}",
                code=f"DS-{day}",
                experience_title="Dinner in the dark",
                local_date=f"2026-12-0{day}",
                local_start_time="19:00",
                time_zone="Asia/Ho_Chi_Minh",
                starts_at=None,
                capacity=40,
                paid=0,
                pending=0,
                status=EventStatus.SCHEDULED,
                experience_only_enabled=False,
                dinner_price=None,
                experience_only_price=None,
                version=1,
            )
        )
    view.mark_ready()
    return view


def test_every_rpc_has_a_handler_and_a_servicer_method() -> None:
    handlers = method_handlers(AvailabilityServicer(ready_view()))
    assert set(handlers) == {method.name for method in SERVICE.methods}
    for method in SERVICE.methods:
        assert callable(getattr(AvailabilityServicer, method.name, None)), method.name
        handler = handlers[method.name]
        assert handler.response_streaming == method.server_streaming
        assert not handler.request_streaming
        # The generated request class, so the error interceptor can name it.
        assert handler.request_deserializer.__self__.DESCRIPTOR is method.input_type


def test_an_rpc_without_a_servicer_method_fails_at_registration() -> None:
    class Incomplete(AvailabilityServicer):
        ListAvailability = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="ListAvailability"):
        method_handlers(Incomplete(ready_view()))


def test_the_watch_stream_sends_bytes_serialized_once() -> None:
    handlers = method_handlers(AvailabilityServicer(ready_view()))
    payload = availability_pb2.EventAvailability(event_id="x", version=3).SerializeToString()
    assert handlers["WatchAvailability"].response_serializer(payload) is payload
    message = availability_pb2.EventAvailability(event_id="x")
    assert handlers["GetEventAvailability"].response_serializer(message) == (
        message.SerializeToString()
    )


def test_pre_serialized_names_are_rpcs_of_the_service() -> None:
    assert not servicer_module.PRE_SERIALIZED - {method.name for method in SERVICE.methods}


async def test_list_converts_and_delegates_to_the_view() -> None:
    servicer = AvailabilityServicer(ready_view(3, 1, 2))
    context: grpc.aio.ServicerContext = None
    first = await servicer.ListAvailability(
        availability_pb2.ListAvailabilityRequest(page_size=2), context
    )
    assert [e.local_date for e in first.events] == ["2026-12-01", "2026-12-02"]
    rest = await servicer.ListAvailability(
        availability_pb2.ListAvailabilityRequest(page_size=2, page_token=first.next_page_token),
        context,
    )
    assert [e.local_date for e in rest.events] == ["2026-12-03"]
    assert rest.next_page_token == ""


async def test_the_same_message_object_is_served_to_every_reader() -> None:
    view = ready_view(1)
    servicer = AvailabilityServicer(view)
    context: grpc.aio.ServicerContext = None
    event_id = "00000000-0000-4000-8000-000000000001"
    got = await servicer.GetEventAvailability(
        availability_pb2.GetEventAvailabilityRequest(event_id=event_id), context
    )
    listed = await servicer.ListAvailability(availability_pb2.ListAvailabilityRequest(), context)
    assert got is view.get(event_id).message
    assert listed.events[0] == got
