"""The one place where slotlock errors become gRPC status codes.

Servicer methods are wrapped with ``@grpc_errors.mapped``: a ``SlotlockError`` aborts the call with
its code and message; anything unexpected is logged and reported as INTERNAL (never UNKNOWN, never
a traceback on the wire).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from slotlock import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.SlotlockError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: errors.SlotlockError) -> grpc.StatusCode:
    for kind, code in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def mapped(
    handler: Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """Wrap a unary servicer method so errors leave as clear gRPC statuses."""

    @functools.wraps(handler)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await handler(self, request, context)
        except errors.SlotlockError as error:
            await context.abort(status_for(error), error.message)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if _is_abort(error):
                raise
            log.exception("internal error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def mapped_stream(
    handler: Callable[[Self, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]:
    """Wrap a server-streaming servicer method the same way."""

    @functools.wraps(handler)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        try:
            async for item in handler(self, request, context):
                yield item
        except errors.SlotlockError as error:
            await context.abort(status_for(error), error.message)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if _is_abort(error):
                raise
            log.exception("internal error in %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    return wrapper


def _is_abort(error: BaseException) -> bool:
    # grpc.aio raises AbortError from context.abort(); let it through untouched.
    return type(error).__name__ == "AbortError"


def unwrap(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    """The status and message of a failed call, for clients that print one readable line."""
    details: Any = error.details()
    return error.code(), str(details or error.code().name)
