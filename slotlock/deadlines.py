"""The caller's deadline, where the adapters can see it.

A gRPC handler knows how long its caller will wait (``context.time_remaining()``); the database
adapter several layers below is where that matters: it must not wait for a connection, or retry a
transaction, past the moment the caller gives up. Passing the deadline down every use-case method
would thread a transport detail through the domain, so the edge puts it in a context variable
(each RPC runs in its own task, hence its own context) and ``remaining()`` reads it.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

# When the current call's caller gives up, on the monotonic clock; None: no deadline (or no call).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "slotlock_caller_deadline", default=None
)

T = TypeVar("T")


def remaining() -> float | None:
    """Seconds until the current caller gives up (may be <= 0), or None without a deadline."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def set_remaining(seconds: float | None) -> contextvars.Token[float | None]:
    """Record the current call's deadline, ``seconds`` from now (None: none)."""
    return _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)


def reset(token: contextvars.Token[float | None]) -> None:
    _DEADLINE.reset(token)


def following_deadline(
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[T]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[T]]:
    """Wrap a unary servicer method so that the code it calls sees the caller's deadline."""

    @functools.wraps(behaviour)
    async def call(request: Any, context: grpc.aio.ServicerContext) -> T:
        token = set_remaining(context.time_remaining())
        try:
            return await behaviour(request, context)
        finally:
            reset(token)

    return call


S = TypeVar("S")


def following_deadlines(servicer: S, service: ServiceDescriptor) -> S:
    """``servicer`` with each unary RPC of ``service`` wrapped by ``following_deadline`` (the
    generated ``add_*_to_server`` functions read the methods off the object)."""
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        behaviour = getattr(servicer, method.name)
        setattr(servicer, method.name, following_deadline(behaviour))
    return servicer
