"""The reservation domain's errors. Each subclasses a category from ``slotlock.errors``, which the
gRPC edge maps to a status code in one table."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from slotlock.errors import (
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unavailable,
)


class InvalidField(InvalidRequest):
    reason = "INVALID_FIELD"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)


class EventNotFound(NotFound):
    reason = "EVENT_NOT_FOUND"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} not found", metadata={"event_id": event_id})


class ReservationNotFound(NotFound):
    reason = "RESERVATION_NOT_FOUND"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(
            f"reservation {reservation_id} not found", metadata={"reservation_id": reservation_id}
        )


class NotEnoughSeats(Conflict):
    """Not enough free seats. When some are held by buyers in checkout, says so and (once the
    store has read it) when the first of those holds lapses: metadata ``seats_in_checkout`` and
    ``next_hold_lapses_at`` (RFC 3339, UTC)."""

    reason = "NOT_ENOUGH_SEATS"

    def __init__(
        self,
        requested: int,
        remaining: int,
        *,
        in_checkout: int = 0,
        next_lapse_at: datetime | None = None,
        time_zone: str = "UTC",
    ) -> None:
        left = "no seats are left" if remaining == 0 else f"only {remaining} left"
        message = f"not enough seats: {requested} requested, {left}"
        metadata = {"seats_requested": str(requested), "seats_left": str(remaining)}
        if in_checkout:
            held = (
                f"all {in_checkout} remaining seats are in checkout"
                if remaining == 0
                else f"{in_checkout} more are in checkout"
            )
            message += f"; {held}"
            metadata["seats_in_checkout"] = str(in_checkout)
            if next_lapse_at is not None:
                local = next_lapse_at.astimezone(ZoneInfo(time_zone))
                message += f"; the first hold lapses at {local:%H:%M:%S} ({time_zone})"
                metadata["next_hold_lapses_at"] = next_lapse_at.astimezone(UTC).isoformat()
        super().__init__(message, metadata=metadata)
        self.requested = requested
        self.remaining = remaining
        self.in_checkout = in_checkout


class CustomerLimitReached(Conflict):
    reason = "CUSTOMER_LIMIT_REACHED"

    def __init__(self, requested: int, held: int, limit: int) -> None:
        super().__init__(
            f"at most {limit} seats per customer for this event: this customer already holds "
            f"or has paid for {held}, and asked for {requested} more",
            metadata={
                "seats_requested": str(requested),
                "seats_held_by_customer": str(held),
                "max_seats_per_customer": str(limit),
            },
        )


class HoldNotExtendable(Conflict):
    """ExtendHold refused by a cap; ``cause`` (metadata) says which."""

    reason = "HOLD_NOT_EXTENDABLE"

    def __init__(self, cause: str, why: str) -> None:
        super().__init__(f"the hold cannot be extended: {why}", metadata={"cause": cause})
        self.cause = cause


class PaymentToRefund(Conflict):
    """A late ConfirmHold whose seats were gone: the payment is recorded (committed) and awaits
    a refund; the reservation reads PAYMENT_TO_REFUND."""

    reason = "PAYMENT_TO_REFUND"

    def __init__(
        self, reservation_id: str, payment_reference: str, quantity: int, why: str
    ) -> None:
        super().__init__(
            f"hold expired before payment and its seats could not be taken again ({why}); the "
            f"payment {payment_reference!r} is recorded and will be refunded",
            metadata={
                "reservation_id": reservation_id,
                "payment_reference": payment_reference,
                "seats_requested": str(quantity),
            },
        )


class EventNotOpen(Conflict):
    """The event is cancelled or its sales are closed."""

    reason = "EVENT_NOT_OPEN"


class EventStarted(Conflict):
    reason = "EVENT_STARTED"

    def __init__(self) -> None:
        super().__init__("the event has already started; holds are no longer taken")


class TicketTypeDisabled(Conflict):
    reason = "TICKET_TYPE_DISABLED"

    def __init__(self) -> None:
        super().__init__("experience-only tickets are not enabled for this event")


class CapacityBelowSold(Conflict):
    reason = "CAPACITY_BELOW_SOLD"

    def __init__(self, capacity: int, taken: int) -> None:
        super().__init__(
            f"capacity {capacity} is below the {taken} seats already paid or held; "
            "release or refund holds first",
            metadata={"capacity": str(capacity), "seats_taken": str(taken)},
        )


class HoldExpired(Conflict):
    reason = "HOLD_EXPIRED"

    def __init__(self) -> None:
        super().__init__("hold expired: its seats were released; create a new hold")


class WrongHoldState(Conflict):
    """The reservation is not in a state that allows the request (e.g. releasing a PAID one)."""

    reason = "WRONG_HOLD_STATE"


class WrongHoldToken(PermissionDenied):
    reason = "WRONG_HOLD_TOKEN"

    def __init__(self) -> None:
        super().__init__("the hold token does not match this reservation")


class IdempotencyKeyReused(AlreadyExists):
    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "this idempotency key was already used for a different request; "
            "use a new key for a new hold"
        )


class DeadlinePassed(DeadlineExceeded):
    reason = "DEADLINE_PASSED"

    def __init__(self) -> None:
        super().__init__(
            "the deadline passed before the hold was written; no seats were taken "
            "(a retry with the same idempotency key is safe)"
        )


class DatabaseUnavailable(Unavailable):
    reason = "DATABASE_UNAVAILABLE"

    def __init__(self, detail: str = "") -> None:
        message = "the reservation database is unavailable; retry shortly"
        super().__init__(f"{message} ({detail})" if detail else message)


class DatabaseFailed(Exception):
    """A statement failed for a reason no retry fixes: a bug, reported as INTERNAL and logged.
    Deliberately not a SlotlockError: the caller did nothing wrong and cannot fix it."""
