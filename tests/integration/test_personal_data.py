"""Less personal data (issue 9, item 6): how a buyer pays never goes on the feed, a released hold
keeps no payment details, and GetReservation shows them only to the hold's holder or an admin."""

from __future__ import annotations

import grpc
import psycopg
import pytest

from slotlock.identity import BOOKING
from slotlock.v1 import catalog_pb2, changes_pb2, reservation_pb2
from slotlock.v1.reservation_pb2_grpc import ReservationServiceStub
from slotlock_cli.builders import event_request
from tests.support import StartReservation, open_channel

PAYMENT = catalog_pb2.PaymentAttempt(
    provider_order_id="ORDER-SECRET-1",
    virtual_account_number="VA-SECRET-2",
    qr_code="QR-SECRET-3",
    qr_code_url="https://pay.example/QR-SECRET-4",
)
SECRETS = (b"ORDER-SECRET", b"VA-SECRET", b"QR-SECRET", b"PAYREF-SECRET")


def payloads(database_url: str) -> list[bytes]:
    with psycopg.connect(database_url) as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT payload FROM outbox ORDER BY id")]


async def test_payment_details_stay_off_the_feed_and_go_with_a_release(
    start_reservation: StartReservation, database_url: str
) -> None:
    server = await start_reservation()
    address = f"127.0.0.1:{server.port}"
    async with open_channel(address) as admin_channel, open_channel(address, BOOKING) as channel:
        admin = ReservationServiceStub(admin_channel)
        booking = ReservationServiceStub(channel)
        event = await admin.UpsertEvent(event_request("PII-1", capacity=10))

        async def hold_with_payment() -> reservation_pb2.CreateHoldResponse:
            hold = await booking.CreateHold(
                reservation_pb2.CreateHoldRequest(
                    event_id=event.id, quantity=1, customer_ref="buyer-1"
                )
            )
            await booking.RecordPaymentAttempt(
                reservation_pb2.RecordPaymentAttemptRequest(
                    reservation_id=hold.reservation.id,
                    hold_token=hold.hold_token,
                    payment=PAYMENT,
                )
            )
            return hold

        paid, released = await hold_with_payment(), await hold_with_payment()
        await booking.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=paid.reservation.id,
                hold_token=paid.hold_token,
                payment_reference="PAYREF-SECRET-5",
            )
        )
        await booking.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(
                reservation_id=released.reservation.id, hold_token=released.hold_token
            )
        )

        # The holder sees its own payment details, an admin sees them...
        mine = await booking.GetReservation(
            reservation_pb2.GetReservationRequest(
                reservation_id=paid.reservation.id, hold_token=paid.hold_token
            )
        )
        assert mine.payment.provider_order_id == PAYMENT.provider_order_id
        assert mine.payment_reference == "PAYREF-SECRET-5"
        seen_by_admin = await admin.GetReservation(
            reservation_pb2.GetReservationRequest(reservation_id=paid.reservation.id)
        )
        assert seen_by_admin.payment.qr_code_url == PAYMENT.qr_code_url
        # ...another buyer's token, or none, sees nothing.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await booking.GetReservation(
                reservation_pb2.GetReservationRequest(
                    reservation_id=paid.reservation.id, hold_token=released.hold_token
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await booking.GetReservation(
                reservation_pb2.GetReservationRequest(reservation_id=paid.reservation.id)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Released: no payment details kept (as expiry does).
        gone = await admin.GetReservation(
            reservation_pb2.GetReservationRequest(reservation_id=released.reservation.id)
        )
        assert gone.status == catalog_pb2.RESERVATION_STATUS_CANCELLED
        assert not gone.HasField("payment")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT provider_order_id, virtual_account_number, qr_code, qr_code_url"
            " FROM reservations WHERE id = %s",
            (released.reservation.id,),
        ).fetchone()
    assert row == (None, None, None, None)

    # Nothing of how anyone paid is in any message written for the feed.
    written = payloads(database_url)
    kinds = {changes_pb2.EventChange.FromString(p).type for p in written}
    assert {
        changes_pb2.CHANGE_TYPE_HOLD_CONFIRMED,
        changes_pb2.CHANGE_TYPE_HOLD_RELEASED,
    } <= kinds
    for payload in written:
        assert not any(secret in payload for secret in SECRETS), payload
        change = changes_pb2.EventChange.FromString(payload)
        if change.HasField("reservation"):
            assert not change.reservation.HasField("payment")
            assert change.reservation.payment_reference == ""
            assert change.reservation.customer_ref == "buyer-1"  # kept: see the README
