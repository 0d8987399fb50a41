"""The gRPC edge of the reservation service: protobuf in, domain types to the use cases
(``application.Reservations``), protobuf out. Nothing else happens here: errors become status
codes in the server's interceptor (``slotlock.grpc_errors``), which checks request bounds too."""

from __future__ import annotations

import time
from typing import TypeAlias

import grpc

from reservation_service import convert
from reservation_service.application import Reservations
from slotlock import auth
from slotlock.ids import parse_uuid
from slotlock.v1 import catalog_pb2, reservation_pb2, reservation_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext


class ReservationServicer(reservation_pb2_grpc.ReservationServiceServicer):
    def __init__(self, reservations: Reservations) -> None:
        self._reservations = reservations

    # --- catalog -------------------------------------------------------------------------------

    async def UpsertEvent(
        self, request: reservation_pb2.UpsertEventRequest, context: Context
    ) -> catalog_pb2.Event:
        spec = convert.event_spec_from_proto(request)
        event = await self._reservations.upsert_event(spec, auth.current_caller())
        return convert.event_to_proto(event)

    async def GetEvent(
        self, request: reservation_pb2.GetEventRequest, context: Context
    ) -> catalog_pb2.Event:
        event_id = parse_uuid(request.event_id, "event_id")
        return convert.event_to_proto(await self._reservations.get_event(event_id))

    async def ListEvents(
        self, request: reservation_pb2.ListEventsRequest, context: Context
    ) -> reservation_pb2.ListEventsResponse:
        events, token = await self._reservations.list_events(
            from_date=convert.parse_optional_date(request.from_date, "from_date"),
            to_date=convert.parse_optional_date(request.to_date, "to_date"),
            status=convert.event_status_filter(request.status),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return reservation_pb2.ListEventsResponse(
            events=[convert.event_to_proto(e) for e in events], next_page_token=token
        )

    # --- holds ---------------------------------------------------------------------------------

    async def CreateHold(
        self, request: reservation_pb2.CreateHoldRequest, context: Context
    ) -> reservation_pb2.CreateHoldResponse:
        # The caller's deadline goes with the request: a hold its caller gave up on while the
        # batch waited is not written (see ReservationStore.create_holds).
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        hold = await self._reservations.create_hold(
            convert.hold_request_from_proto(request, deadline, auth.current_caller().subject)
        )
        return reservation_pb2.CreateHoldResponse(
            reservation=convert.reservation_to_proto(hold.reservation), hold_token=hold.token
        )

    async def RecordPaymentAttempt(
        self, request: reservation_pb2.RecordPaymentAttemptRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation = await self._reservations.record_payment_attempt(
            parse_uuid(request.reservation_id, "reservation_id"),
            request.hold_token,
            convert.payment_from_proto(request.payment),
            request.payment_in_progress,
            auth.current_caller(),
        )
        return convert.reservation_to_proto(reservation)

    async def ConfirmHold(
        self, request: reservation_pb2.ConfirmHoldRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation = await self._reservations.confirm_hold(
            parse_uuid(request.reservation_id, "reservation_id"),
            request.hold_token,
            request.payment_reference,
            auth.current_caller(),
        )
        return convert.reservation_to_proto(reservation)

    async def ExtendHold(
        self, request: reservation_pb2.ExtendHoldRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation = await self._reservations.extend_hold(
            parse_uuid(request.reservation_id, "reservation_id"),
            request.hold_token,
            request.extend_by_s,
            auth.current_caller(),
        )
        return convert.reservation_to_proto(reservation)

    async def ReleaseHold(
        self, request: reservation_pb2.ReleaseHoldRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation = await self._reservations.release_hold(
            parse_uuid(request.reservation_id, "reservation_id"),
            request.hold_token,
            auth.current_caller(),
        )
        return convert.reservation_to_proto(reservation)

    async def GetReservation(
        self, request: reservation_pb2.GetReservationRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        return convert.reservation_to_proto(
            await self._reservations.get_reservation(
                reservation_id, request.hold_token, auth.current_caller()
            )
        )

    async def ListReservations(
        self, request: reservation_pb2.ListReservationsRequest, context: Context
    ) -> reservation_pb2.ListReservationsResponse:
        found, token = await self._reservations.list_reservations(
            event_id=parse_uuid(request.event_id, "event_id") if request.event_id else None,
            status=convert.reservation_status_filter(request.status),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return reservation_pb2.ListReservationsResponse(
            reservations=[convert.reservation_to_proto(r) for r in found], next_page_token=token
        )

    # --- admin ---------------------------------------------------------------------------------

    async def RefundReservation(
        self, request: reservation_pb2.RefundReservationRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation = await self._reservations.refund_reservation(
            parse_uuid(request.reservation_id, "reservation_id"),
            request.reason,
            request.quantity,
            auth.current_caller(),
        )
        return convert.reservation_to_proto(reservation)

    async def ExpireStaleHolds(
        self, request: reservation_pb2.ExpireStaleHoldsRequest, context: Context
    ) -> reservation_pb2.ExpireStaleHoldsResponse:
        result = await self._reservations.expire_pass()
        return reservation_pb2.ExpireStaleHoldsResponse(
            released=result.released, checked=result.checked
        )

    async def ListChanges(
        self, request: reservation_pb2.ListChangesRequest, context: Context
    ) -> reservation_pb2.ListChangesResponse:
        found, token = await self._reservations.list_changes(
            event_id=parse_uuid(request.event_id, "event_id") if request.event_id else None,
            reservation_id=(
                parse_uuid(request.reservation_id, "reservation_id")
                if request.reservation_id
                else None
            ),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return reservation_pb2.ListChangesResponse(
            changes=[convert.history_to_proto(e) for e in found], next_page_token=token
        )
