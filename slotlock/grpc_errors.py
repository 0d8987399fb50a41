"""The one place where slotlock errors become gRPC status codes.

``ErrorInterceptor`` sits on both servers and wraps every RPC, unary and server-streaming, so no
servicer method has to remember to: a ``SlotlockError`` ends the call with the code of its
category and its message; a request body that is not valid protobuf is answered
INVALID_ARGUMENT (grpc.aio would otherwise answer UNKNOWN and log a traceback); anything else
unexpected is logged once and answered INTERNAL, never UNKNOWN and never a traceback on the wire.
Before any handler runs, the request's fields are checked against the contract's bounds
(``slotlock.bounds``): size limits and no NUL characters.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from slotlock import bounds, errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.SlotlockError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)

INTERNAL_MESSAGE = "internal error; see the service log"


def status_for(error: errors.SlotlockError) -> grpc.StatusCode:
    for kind, code in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request body that did not parse, so the call can be refused politely
    inside the handler (a deserializer that raises makes grpc.aio answer UNKNOWN)."""

    type_name: str


Context: TypeAlias = grpc.aio.ServicerContext
Behaviour = Callable[..., Any]


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio is untyped
    """Maps errors to statuses for every unary-request RPC of the server it is installed on.

    Wrapped handlers are cached per method, so the per-call cost is one dict look-up. Methods
    with streaming requests (only reflection here) are passed through unchanged.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserializer = handler.request_deserializer
    type_name = _message_name(deserializer, method)

    def decode(raw: bytes) -> object:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception:  # DecodeError, bad UTF-8 in a string field, truncated input...
            return Undecodable(type_name)

    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, method),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(handler.unary_unary, method),
        request_deserializer=decode,
        response_serializer=handler.response_serializer,
    )


def _unary(behaviour: Behaviour, method: str) -> Behaviour:
    async def call(request: object, context: Context) -> object:
        if isinstance(request, Undecodable):
            await _refuse_undecodable(request, method, context)
        try:
            bounds.check_request(request)  # type: ignore[arg-type]  # decoded by protobuf
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort_for(error, method, context)
        raise AssertionError("unreachable: context.abort raises")

    return call


def _streaming(behaviour: Behaviour, method: str) -> Behaviour:
    if not inspect.isasyncgenfunction(behaviour):
        # A handler that writes with context.write (the health service's Watch) stays a
        # coroutine: grpc.aio refuses a generator that also writes.
        async def call_writer(request: object, context: Context) -> None:
            if isinstance(request, Undecodable):
                await _refuse_undecodable(request, method, context)
            try:
                bounds.check_request(request)  # type: ignore[arg-type]
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    await result
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as error:
                await _abort_for(error, method, context)

        return call_writer

    async def call(request: object, context: Context) -> AsyncIterator[object]:
        if isinstance(request, Undecodable):
            await _refuse_undecodable(request, method, context)
        try:
            bounds.check_request(request)  # type: ignore[arg-type]
            async for item in behaviour(request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort_for(error, method, context)

    return call


async def _refuse_undecodable(request: Undecodable, method: str, context: Context) -> None:
    log.warning("%s: refused a request that is not a valid %s", method, request.type_name)
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request could not be decoded as {request.type_name}",
    )


async def _abort_for(error: Exception, method: str, context: Context) -> None:
    if isinstance(error, errors.SlotlockError):
        await context.abort(status_for(error), error.message)
    log.exception("internal error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _message_name(deserializer: Callable[[bytes], object] | None, method: str) -> str:
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return str(full_name) if full_name else f"the request of {method}"
