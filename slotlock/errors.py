"""Error categories every slotlock service raises. Each service defines its own domain errors as
subclasses (``HoldExpired(Conflict)``, ...); the gRPC edge maps these categories to status codes
in one table (``slotlock.grpc_errors``). Messages are written for a person to read; ``reason``
(a stable UPPER_SNAKE_CASE code) and ``metadata`` are written for a program: the gRPC edge sends
them as a ``google.rpc.ErrorInfo`` detail, so clients branch on the reason, never on the text."""

from __future__ import annotations

from collections.abc import Mapping


class SlotlockError(Exception):
    """Base of every error slotlock reports to a caller on purpose."""

    reason = "SLOTLOCK_ERROR"  # each category and domain error names its own

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidRequest(SlotlockError):
    """The request itself is malformed: fixing it is the caller's job."""

    reason = "INVALID_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        # The request field at fault (a path such as ``event.capacity``), sent to the client
        # as a google.rpc.BadRequest field violation.
        self.field = field


class NotFound(SlotlockError):
    """A thing the request names does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(SlotlockError):
    """The request clashes with something that exists (e.g. an idempotency key reused)."""

    reason = "ALREADY_EXISTS"


class Conflict(SlotlockError):
    """The request is well-formed but the current state refuses it (no seats, hold expired...)."""

    reason = "CONFLICT"


class Unauthenticated(SlotlockError):
    """The caller sent no credential, or one that cannot be verified (bad, expired, foreign)."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(SlotlockError):
    """The caller lacks the role or the secret the request needs (e.g. a wrong hold token)."""

    reason = "PERMISSION_DENIED"


class ResourceExhausted(SlotlockError):
    """A limit of this replica is reached (e.g. watchers); retry later or elsewhere."""

    reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SlotlockError):
    """The caller's deadline passed before the work was done; nothing was changed."""

    reason = "DEADLINE_EXCEEDED"


class Unavailable(SlotlockError):
    """A dependency (database, broker) is down; retrying later may succeed."""

    reason = "UNAVAILABLE"


class NotReady(Unavailable):
    """The service is still starting (for instance rebuilding its view)."""

    reason = "NOT_READY"
