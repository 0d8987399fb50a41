"""Who is calling, as the use cases see it: a subject and its roles, free of gRPC and of how the
caller proved them (a signed token or a client certificate: see ``slotlock.auth``).

The roles are those of the contract's role table (``protos/slotlock/v1/access.proto``). The
interceptor decides whether a caller may call an RPC at all; a use case asks a ``Caller`` only
for finer rules, such as "a booking caller must show the hold token, an admin need not".
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
BOOKING = "booking"
READER = "reader"
ROLES: frozenset[str] = frozenset({ADMIN, BOOKING, READER})


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``subject`` names it in logs and messages (a token's ``sub``, or
    the identity of a client certificate)."""

    subject: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles


# The caller of a server run with authentication switched off (SLOTLOCK_INSECURE_NO_AUTH), and
# of code that calls a use case directly (unit tests, scripts): it may do everything.
TRUSTED = Caller(subject="trusted (no authentication)", roles=ROLES)
