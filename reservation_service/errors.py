"""The reservation domain's errors. Each subclasses a category from ``slotlock.errors``, which the
gRPC edge maps to a status code in one table."""

from __future__ import annotations

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
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class EventNotFound(NotFound):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} not found")


class ReservationNotFound(NotFound):
    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id} not found")


class NotEnoughSeats(Conflict):
    def __init__(self, requested: int, remaining: int) -> None:
        left = "no seats are left" if remaining == 0 else f"only {remaining} left"
        super().__init__(f"not enough seats: {requested} requested, {left}")
        self.requested = requested
        self.remaining = remaining


class EventNotOpen(Conflict):
    """The event is cancelled or its sales are closed."""


class EventStarted(Conflict):
    def __init__(self) -> None:
        super().__init__("the event has already started; holds are no longer taken")


class TicketTypeDisabled(Conflict):
    def __init__(self) -> None:
        super().__init__("experience-only tickets are not enabled for this event")


class CapacityBelowSold(Conflict):
    def __init__(self, capacity: int, taken: int) -> None:
        super().__init__(
            f"capacity {capacity} is below the {taken} seats already paid or held; "
            "release or refund holds first"
        )


class HoldExpired(Conflict):
    def __init__(self) -> None:
        super().__init__("hold expired: its seats were released; create a new hold")


class WrongHoldState(Conflict):
    """The reservation is not in a state that allows the request (e.g. releasing a PAID one)."""


class WrongHoldToken(PermissionDenied):
    def __init__(self) -> None:
        super().__init__("the hold token does not match this reservation")


class IdempotencyKeyReused(AlreadyExists):
    def __init__(self) -> None:
        super().__init__(
            "this idempotency key was already used for a different request; "
            "use a new key for a new hold"
        )


class DeadlinePassed(DeadlineExceeded):
    def __init__(self) -> None:
        super().__init__(
            "the deadline passed before the hold was written; no seats were taken "
            "(a retry with the same idempotency key is safe)"
        )


class DatabaseUnavailable(Unavailable):
    def __init__(self, detail: str = "") -> None:
        message = "the reservation database is unavailable; retry shortly"
        super().__init__(f"{message} ({detail})" if detail else message)


class DatabaseFailed(Exception):
    """A statement failed for a reason no retry fixes: a bug, reported as INTERNAL and logged.
    Deliberately not a SlotlockError: the caller did nothing wrong and cannot fix it."""
