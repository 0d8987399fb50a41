"""Error categories every slotlock service raises. Each service defines its own domain errors as
subclasses (``HoldExpired(Conflict)``, ...); the gRPC edge maps these categories to status codes
in one table (``slotlock.grpc_errors``). Messages are written for a person to read."""

from __future__ import annotations


class SlotlockError(Exception):
    """Base of every error slotlock reports to a caller on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SlotlockError):
    """The request itself is malformed: fixing it is the caller's job."""


class NotFound(SlotlockError):
    """A thing the request names does not exist."""


class AlreadyExists(SlotlockError):
    """The request clashes with something that exists (e.g. an idempotency key reused)."""


class Conflict(SlotlockError):
    """The request is well-formed but the current state refuses it (no seats, hold expired...)."""


class Unauthenticated(SlotlockError):
    """The caller sent no credential, or one that cannot be verified (bad, expired, foreign)."""


class PermissionDenied(SlotlockError):
    """The caller lacks the role or the secret the request needs (e.g. a wrong hold token)."""


class ResourceExhausted(SlotlockError):
    """A limit of this replica is reached (e.g. watchers); retry later or elsewhere."""


class DeadlineExceeded(SlotlockError):
    """The caller's deadline passed before the work was done; nothing was changed."""


class Unavailable(SlotlockError):
    """A dependency (database, broker) is down; retrying later may succeed."""


class NotReady(Unavailable):
    """The service is still starting (for instance rebuilding its view)."""
