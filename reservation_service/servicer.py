"""The gRPC edge of the reservation service: parse and validate requests, call the store, convert
results. Errors leave through ``slotlock.grpc_errors.mapped`` (one table of status codes)."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from reservation_service import convert, errors, holds
from reservation_service.batching import HoldBatcher
from reservation_service.expiry import Expirer
from reservation_service.holds import HoldPolicy, HoldRequest, HoldTokens
from reservation_service.store import Page, ReservationStore, decode_page_token
from slotlock import grpc_errors
from slotlock.errors import SlotlockError
from slotlock.ids import parse_uuid
from slotlock.v1 import catalog_pb2, reservation_pb2, reservation_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext
DEFAULT_PAGE = 50
MAX_PAGE = 500


class ReservationServicer(reservation_pb2_grpc.ReservationServiceServicer):
    def __init__(
        self,
        store: ReservationStore,
        batcher: HoldBatcher,
        expirer: Expirer,
        policy: HoldPolicy,
        tokens: HoldTokens,
    ) -> None:
        self._store = store
        self._batcher = batcher
        self._expirer = expirer
        self._policy = policy
        self._tokens = tokens

    # --- catalog -------------------------------------------------------------------------------

    @grpc_errors.mapped
    async def UpsertEvent(
        self, request: reservation_pb2.UpsertEventRequest, context: Context
    ) -> catalog_pb2.Event:
        event = await self._store.upsert_event(convert.event_spec_from_proto(request))
        return convert.event_to_proto(event)

    @grpc_errors.mapped
    async def GetEvent(
        self, request: reservation_pb2.GetEventRequest, context: Context
    ) -> catalog_pb2.Event:
        event_id = parse_uuid(request.event_id, "event_id")
        return convert.event_to_proto(await self._store.get_event(event_id))

    @grpc_errors.mapped
    async def ListEvents(
        self, request: reservation_pb2.ListEventsRequest, context: Context
    ) -> reservation_pb2.ListEventsResponse:
        from_date = convert.parse_optional_date(request.from_date, "from_date")
        to_date = convert.parse_optional_date(request.to_date, "to_date")
        if from_date and to_date and from_date > to_date:
            raise errors.InvalidField("to_date", "must not be before from_date")
        events, token = await self._store.list_events(
            from_date=from_date,
            to_date=to_date,
            status=convert.event_status_filter(request.status),
            page=parse_page(request.page_size, request.page_token),
        )
        return reservation_pb2.ListEventsResponse(
            events=[convert.event_to_proto(e) for e in events], next_page_token=token
        )

    # --- holds ---------------------------------------------------------------------------------

    @grpc_errors.mapped
    async def CreateHold(
        self, request: reservation_pb2.CreateHoldRequest, context: Context
    ) -> reservation_pb2.CreateHoldResponse:
        hold = HoldRequest(
            event_id=parse_uuid(request.event_id, "event_id"),
            quantity=request.quantity,
            ticket_type=convert.ticket_type_from_proto(request.ticket_type),
            customer_ref=request.customer_ref,
            idempotency_key=request.idempotency_key or None,
        )
        holds.validate_hold_request(hold, self._policy)  # bad input never enters a batch
        outcome = await self._batcher.place(hold)
        if isinstance(outcome, SlotlockError):
            raise outcome
        self._expirer.notice_expiry(outcome.expires_at)
        return reservation_pb2.CreateHoldResponse(
            reservation=convert.reservation_to_proto(outcome),
            hold_token=self._tokens.token_for(outcome.id),
        )

    @grpc_errors.mapped
    async def RecordPaymentAttempt(
        self, request: reservation_pb2.RecordPaymentAttemptRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        require_token(request.hold_token)
        attempt = convert.payment_from_proto(request.payment)
        reservation = await self._store.record_payment_attempt(
            reservation_id, request.hold_token, attempt
        )
        return convert.reservation_to_proto(reservation)

    @grpc_errors.mapped
    async def ConfirmHold(
        self, request: reservation_pb2.ConfirmHoldRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        require_token(request.hold_token)
        if not request.payment_reference.strip():
            raise errors.InvalidField("payment_reference", "is required")
        reservation = await self._store.confirm_hold(
            reservation_id, request.hold_token, request.payment_reference.strip()
        )
        return convert.reservation_to_proto(reservation)

    @grpc_errors.mapped
    async def ReleaseHold(
        self, request: reservation_pb2.ReleaseHoldRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        require_token(request.hold_token)
        reservation = await self._store.release_hold(reservation_id, request.hold_token)
        return convert.reservation_to_proto(reservation)

    @grpc_errors.mapped
    async def GetReservation(
        self, request: reservation_pb2.GetReservationRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        return convert.reservation_to_proto(await self._store.get_reservation(reservation_id))

    @grpc_errors.mapped
    async def ListReservations(
        self, request: reservation_pb2.ListReservationsRequest, context: Context
    ) -> reservation_pb2.ListReservationsResponse:
        event_id = parse_uuid(request.event_id, "event_id") if request.event_id else None
        found, token = await self._store.list_reservations(
            event_id=event_id,
            status=convert.reservation_status_filter(request.status),
            page=parse_page(request.page_size, request.page_token),
        )
        return reservation_pb2.ListReservationsResponse(
            reservations=[convert.reservation_to_proto(r) for r in found], next_page_token=token
        )

    # --- admin ---------------------------------------------------------------------------------

    @grpc_errors.mapped
    async def RefundReservation(
        self, request: reservation_pb2.RefundReservationRequest, context: Context
    ) -> catalog_pb2.Reservation:
        reservation_id = parse_uuid(request.reservation_id, "reservation_id")
        return convert.reservation_to_proto(await self._store.refund_reservation(reservation_id))

    @grpc_errors.mapped
    async def ExpireStaleHolds(
        self, request: reservation_pb2.ExpireStaleHoldsRequest, context: Context
    ) -> reservation_pb2.ExpireStaleHoldsResponse:
        result = await self._expirer.expire_now()
        return reservation_pb2.ExpireStaleHoldsResponse(
            released=result.released, checked=result.checked
        )


def require_token(token: str) -> None:
    if not token:
        raise errors.InvalidField("hold_token", "is required (returned by CreateHold)")


def parse_page(page_size: int, page_token: str) -> Page:
    if page_size < 0:
        raise errors.InvalidField("page_size", "must be 0 (default) or more")
    limit = min(page_size or DEFAULT_PAGE, MAX_PAGE)
    return Page(limit=limit, after=decode_page_token(page_token))
