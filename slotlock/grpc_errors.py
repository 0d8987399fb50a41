"""The one place where slotlock errors become gRPC status codes, and where each call is observed.

``ErrorInterceptor`` sits on both servers and wraps every RPC, unary and server-streaming, so no
servicer method has to remember to: a ``SlotlockError`` ends the call with the code of its
category and its message; a request body that is not valid protobuf is answered
INVALID_ARGUMENT (grpc.aio would otherwise answer UNKNOWN and log a traceback); anything else
unexpected is logged once and answered INTERNAL, never UNKNOWN and never a traceback on the wire.
Before any handler runs, the request's fields are checked against the contract's bounds
(``slotlock.bounds``): size limits and no NUL characters.

A refusal carries ``google.rpc`` details in the standard ``grpc-status-details-bin`` trailer
(what grpcio-status reads): an ``ErrorInfo`` with the error's stable ``reason`` and its
``metadata`` (``NOT_ENOUGH_SEATS`` with ``seats_left``...), and for an invalid field a
``BadRequest`` field violation. ``error_details`` decodes them on the client side.

Each call also gets a request id (the caller's ``x-request-id`` metadata, or a new one, echoed in
the trailers and put on every log line written during the call), a count and a latency by status
code (``slotlock.metrics``), a server span when tracing is on, and one log line if it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from slotlock import bounds, errors, logs, metrics, tracing

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.SlotlockError], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)

INTERNAL_MESSAGE = "internal error; see the service log"
ERROR_DOMAIN = "slotlock"  # ErrorInfo.domain of every slotlock refusal
REQUEST_ID = "x-request-id"
DETAILS_KEY = "grpc-status-details-bin"
_MAX_REQUEST_ID = 128
# Codes that say the caller (or the request) was refused, not that the service is in trouble:
# their one log line is INFO. CANCELLED (the caller went away, e.g. a closed watch) is DEBUG.
_CALLER_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "OUT_OF_RANGE",
    }
)


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


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio is untyped
    """A server interceptor that wraps each method's handler once: the wrapped handler is cached
    per method, so a call costs one dict look-up here. Methods with streaming requests (only
    reflection here) pass through unless ``wraps`` says otherwise."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if self.hides(method):
            return None
        handler = await continuation(handler_call_details)
        if handler is None or not self.wraps(handler, method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def hides(self, method: str) -> bool:
        """True: answer UNIMPLEMENTED, as if ``method`` were not there."""
        return False

    def wraps(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return not handler.request_streaming

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class InterceptorChain(WrappingInterceptor):
    """Several wrapping interceptors, outermost first, installed as one: grpc.aio runs each
    interceptor of a server as a coroutine with a continuation on every call; composed here, a
    method's handler is wrapped by all of them once, cached, and a call costs one look-up."""

    def __init__(self, *interceptors: WrappingInterceptor) -> None:
        super().__init__()
        self._chain = interceptors

    def hides(self, method: str) -> bool:
        return any(interceptor.hides(method) for interceptor in self._chain)

    def wraps(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return True  # each of the chain decides for itself in ``wrap``

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for interceptor in reversed(self._chain):  # the innermost wraps the handler first
            if interceptor.wraps(handler, method):
                handler = interceptor.wrap(handler, method)
        return handler


class ErrorInterceptor(WrappingInterceptor):
    """The outermost interceptor: every call observed (request id, metrics, span, one log line
    for a failure) and every error raised inside it, ours or unexpected, mapped to a status."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _wrap(handler, method)


class RequestCheckInterceptor(WrappingInterceptor):
    """The innermost interceptor: a body that is not valid protobuf, or a field past its bound in
    the contract (or holding a NUL), is refused before the handler runs. Innermost, so that it
    runs after authentication (a stranger is told only that it is a stranger) and inside the
    error interceptor (which turns the refusal into INVALID_ARGUMENT with details)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _checked(handler, method)


def _checked(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserializer = handler.request_deserializer
    type_name = _message_name(deserializer, method)

    def decode(raw: bytes) -> object:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception:  # DecodeError, bad UTF-8 in a string field, truncated input...
            return Undecodable(type_name)

    def check(request: object) -> None:
        if isinstance(request, Undecodable):
            raise errors.InvalidRequest(
                f"the request could not be decoded as {request.type_name}",
                reason="UNDECODABLE_REQUEST",
            )
        bounds.check_request(request)  # type: ignore[arg-type]  # decoded by protobuf

    if handler.response_streaming:
        behaviour = handler.unary_stream
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: object, context: Context) -> AsyncIterator[object]:
                check(request)
                async for item in behaviour(request, context):
                    yield item

            checked_stream: Behaviour = stream
        else:  # writes with context.write (the health service's Watch)

            async def written(request: object, context: Context) -> None:
                check(request)
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    await result

            checked_stream = written
        return grpc.unary_stream_rpc_method_handler(
            checked_stream,
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )
    unary = handler.unary_unary

    async def once(request: object, context: Context) -> object:
        check(request)
        result = unary(request, context)
        return await result if inspect.isawaitable(result) else result

    return grpc.unary_unary_rpc_method_handler(
        once, request_deserializer=decode, response_serializer=handler.response_serializer
    )


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    observed = _Method(method, "server_stream" if handler.response_streaming else "unary")
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, observed),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(handler.unary_unary, observed),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _unary(behaviour: Behaviour, observed: _Method) -> Behaviour:
    method = observed.full_name

    async def call(request: object, context: Context) -> object:
        with _Call(observed, context) as scope:
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as error:
                await _abort_for(error, method, scope, context)
        raise AssertionError("unreachable: context.abort raises")

    return call


def _streaming(behaviour: Behaviour, observed: _Method) -> Behaviour:
    method = observed.full_name
    if not inspect.isasyncgenfunction(behaviour):
        # A handler that writes with context.write (the health service's Watch) stays a
        # coroutine: grpc.aio refuses a generator that also writes.
        async def call_writer(request: object, context: Context) -> None:
            with _Call(observed, context) as scope:
                try:
                    result = behaviour(request, context)
                    if inspect.isawaitable(result):
                        await result
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:
                    await _abort_for(error, method, scope, context)

        return call_writer

    async def call(request: object, context: Context) -> AsyncIterator[object]:
        with _Call(observed, context) as scope:
            try:
                async for item in behaviour(request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as error:
                await _abort_for(error, method, scope, context)

    return call


class _Method:
    """One RPC method's metric series, looked up once (a labelled child per status code)."""

    def __init__(self, full_name: str, grpc_type: str) -> None:
        self.full_name = full_name
        service, _, name = full_name.lstrip("/").partition("/")
        self._labels = (service, name, grpc_type)
        self._started = metrics.RPC_STARTED.labels(*self._labels)
        self._by_code: dict[str, tuple[Any, Any]] = {}

    def started(self) -> None:
        self._started.inc()

    def finished(self, code: str, seconds: float) -> None:
        series = self._by_code.get(code)
        if series is None:
            series = self._by_code[code] = (
                metrics.RPC_HANDLED.labels(*self._labels, code),
                metrics.RPC_SECONDS.labels(*self._labels, code),
            )
        series[0].inc()
        series[1].observe(seconds)


@dataclass
class _Call:
    """The life of one call: its request id in the log context, its span, its timer; on exit,
    its count and latency by code and, if it failed, its one log line."""

    method: _Method
    context: Context
    request_id: str = ""
    code: str | None = None  # set before an abort of ours, so the log line knows the reason
    reason: str = ""
    message: str = ""
    _started: float = 0.0
    _token: Any = None
    _span_scope: Any = None
    _span: Any = field(default=None, repr=False)

    def __enter__(self) -> _Call:
        metadata = self.context.invocation_metadata() or ()
        self.request_id = _request_id_of(metadata)
        self._token = logs.request_id.set(self.request_id)
        self.context.set_trailing_metadata(((REQUEST_ID, self.request_id),))
        if tracing.enabled():  # no span machinery per call with tracing off
            self._span_scope = tracing.rpc_span(self.method.full_name, metadata)
            self._span = self._span_scope.__enter__()
        self.method.started()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        seconds = time.perf_counter() - self._started
        code = self._code_after(error)
        try:
            self.method.finished(code, seconds)
            if code != "OK":
                self._log_failure(code, seconds)
            tracing.end_rpc_span(self._span, code, self.message)
        finally:
            if self._span_scope is not None:
                self._span_scope.__exit__(None, None, None)
            # A watch stream closed by the garbage collector ends in another task's context;
            # that context is going away, so there is nothing to restore.
            with contextlib.suppress(ValueError):
                logs.request_id.reset(self._token)

    def _code_after(self, error: BaseException | None) -> str:
        if error is None:
            return "OK"
        if self.code is not None:
            return self.code
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            return "CANCELLED"
        if isinstance(error, grpc.aio.AbortError):  # a handler's own context.abort
            code = self.context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        return "UNKNOWN"

    def _log_failure(self, code: str, seconds: float) -> None:
        if code == "INTERNAL":
            return  # logged with its traceback where it was caught: one line per call
        if code == "CANCELLED":
            level = logging.DEBUG
        elif code in _CALLER_CODES:
            level = logging.INFO
        else:
            level = logging.WARNING
        if not log.isEnabledFor(level):
            return
        fields: dict[str, object] = {
            "rpc": self.method.full_name,
            "code": code,
            "request_id": self.request_id,
            "duration_ms": round(seconds * 1000, 2),
        }
        if self.reason:
            fields["reason"] = self.reason
        log.log(
            level,
            "%s failed: %s %s",
            self.method.full_name,
            code,
            self.message,
            extra={"fields": fields},
        )


def _request_id_of(metadata: Any) -> str:
    for key, value in metadata:
        if key == REQUEST_ID and isinstance(value, str):
            value = value.strip()
            if 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable():
                return value
            break
    return secrets.token_hex(8)


async def _abort_for(error: Exception, method: str, scope: _Call, context: Context) -> None:
    if isinstance(error, errors.SlotlockError):
        await _abort_with(error, status_for(error), scope, context)
    log.exception("internal error in %s", method)
    scope.code, scope.reason, scope.message = "INTERNAL", "INTERNAL", INTERNAL_MESSAGE
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def _abort_with(
    error: errors.SlotlockError, code: grpc.StatusCode, scope: _Call, context: Context
) -> None:
    scope.code, scope.reason, scope.message = code.name, error.reason, error.message
    await context.abort(
        code,
        error.message,
        trailing_metadata=(
            (DETAILS_KEY, status_details(error, code)),
            (REQUEST_ID, scope.request_id),
        ),
    )


def status_details(error: errors.SlotlockError, code: grpc.StatusCode) -> bytes:
    """The serialized ``google.rpc.Status`` of a refusal: an ErrorInfo always, a BadRequest
    field violation when the error names the request field at fault."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details = [_packed(info)]
    field_name = getattr(error, "field", None)
    if field_name:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field_name, description=error.message, reason=error.reason
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return bytes(status.SerializeToString())


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# --- the client side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorDetails:
    """What a slotlock refusal says to a program: its stable reason, facts about it, and the
    request fields at fault (field path -> description)."""

    reason: str
    metadata: Mapping[str, str]
    field_violations: Mapping[str, str]
    request_id: str | None = None


def error_details(error: grpc.RpcError) -> ErrorDetails | None:
    """Decode the ``google.rpc`` details of a failed call (an ``AioRpcError`` or a sync one);
    None when the server sent none (an error from grpc itself, or not a slotlock server)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # the trailer does not match the call's status: not ours
        return None
    if status is None:
        return None
    reason, metadata, violations = "", {}, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
    trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    request_id = next((str(v) for k, v in trailers if k == REQUEST_ID), None)
    return ErrorDetails(reason, metadata, violations, request_id)


def _message_name(deserializer: Callable[[bytes], object] | None, method: str) -> str:
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return str(full_name) if full_name else f"the request of {method}"
