"""OpenTelemetry traces, off unless configured (``SLOTLOCK_OTEL_EXPORTER=console|otlp``).

What is traced: a server span per RPC (the gRPC interceptor; a ``traceparent`` in the call's
metadata becomes its parent), one span per CreateHold batch transaction (child of the first
caller's RPC, linked to the others'), and on the availability side one span per applied change.
The trace context travels from the transaction that wrote a change, in the outbox row's
``trace_context`` column, to the NATS message's ``traceparent`` header, and from there to the
availability update: one trace shows a hold reaching the listing.

Off, every helper here is a no-op that costs a flag test: nothing is created per call. The
OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables itself (endpoint, headers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

EXPORTERS = ("none", "console", "otlp")
Context = otel_context.Context
TRACEPARENT = "traceparent"

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def enabled() -> bool:
    return _tracer is not None


def configure(exporter: str, service_name: str) -> None:
    """Called once by a service's ``__main__``/server: ``none`` leaves tracing off."""
    if exporter == "none":
        return
    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter(service_name=service_name)
    install(span_exporter, service_name, batch=True)


def install(span_exporter: SpanExporter, service_name: str, *, batch: bool = False) -> None:
    """Turn tracing on with ``span_exporter`` (tests pass an in-memory exporter)."""
    global _provider, _tracer
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    processor = BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("slotlock")


def shutdown() -> None:
    """Flush and turn tracing off again."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = _tracer = None


def current_trace_id() -> str | None:
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store or send on; None when off."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def current_context() -> otel_context.Context | None:
    return otel_context.get_current() if _tracer is not None else None


@contextlib.contextmanager
def rpc_span(method: str, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[Span | None]:
    """A server span for one RPC, parented by the caller's ``traceparent`` if it sent one."""
    if _tracer is None:
        yield None
        return
    carrier = {k: v for k, v in metadata or () if k == TRACEPARENT and isinstance(v, str)}
    service, _, name = method.lstrip("/").partition("/")
    with _tracer.start_as_current_span(
        method.lstrip("/"),
        context=_PROPAGATOR.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_rpc_span(span: Span | None, code_name: str, message: str = "") -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code_name", code_name)
    if code_name not in ("OK", "CANCELLED"):
        span.set_status(Status(StatusCode.ERROR, message or code_name))


@contextlib.contextmanager
def batch_span(
    name: str,
    origins: Sequence[otel_context.Context | None],
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A span for work done on behalf of several callers (a group commit): the child of the
    first caller's span, linked to every other caller's, so each caller's trace finds it."""
    if _tracer is None:
        yield
        return
    parents = [trace.get_current_span(o).get_span_context() for o in origins if o is not None]
    valid = [p for p in parents if p.is_valid]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(valid[0])) if valid else None
    with _tracer.start_as_current_span(
        name,
        context=parent,
        links=[Link(p) for p in valid[1:]],
        attributes=dict(attributes or {}),
    ):
        yield


@contextlib.contextmanager
def consumer_span(
    name: str, traceparent: str | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """A span for handling a message that carried ``traceparent`` (no span for one without:
    a rebuild replays thousands of old messages nobody is waiting for)."""
    if _tracer is None or not traceparent:
        yield
        return
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes or {})
    ):
        yield
