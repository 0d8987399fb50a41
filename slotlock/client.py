"""The one gRPC client of slotlock's two services, shared by the gateway and the operator CLI.

It owns what every client must agree on: the channel options (which must suit the servers' ping
policy), typed async stubs, fetching every page of a ``List*`` call, turning a failed call into a
line a person can read, and a WatchAvailability that survives restarts (it resumes from the
versions already seen, after an exponential backoff with jitter). Protobuf stays protobuf here:
each client renders the replies its own way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from slotlock import conflation
from slotlock.labels import short_name
from slotlock.settings import Reader
from slotlock.tls import ClientTLS
from slotlock.v1 import availability_pb2, availability_pb2_grpc, catalog_pb2, reservation_pb2_grpc

if TYPE_CHECKING:  # typed async stubs exist only in the generated .pyi files
    from slotlock.v1.availability_pb2_grpc import AvailabilityServiceAsyncStub
    from slotlock.v1.reservation_pb2_grpc import ReservationServiceAsyncStub

log = logging.getLogger(__name__)

# Reconnect within a second or two after a service restarts (gRPC's default backoff grows to two
# minutes). Keepalive pings find a dead peer under a long-lived watch; the servers accept a ping
# every 10 s at most (``grpc.http2.min_ping_interval_without_data_ms`` in
# ``slotlock.grpc_server.SERVER_OPTIONS``), so a client must not ping more often than that or it
# would be sent GOAWAY ("too_many_pings"). A unit test holds the two files to this.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)

# Failures that say "the service (or the way to it) is away for now", worth retrying.
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

# gRPC's wording for transport failures: meaningful to whoever debugs the network, not to a person
# buying a ticket or running a command.
_TRANSPORT_WORDS = (
    "failed to connect",
    "connection refused",
    "socket closed",
    "connection reset",
    "broken pipe",
    "goaway",
    "dns resolution",
    "connection attempt timed out",
    "endpoint closing",
)


# Ticket types as people type them ("dinner", "experience-only"), from the generated enum.
TICKET_TYPES: Mapping[str, catalog_pb2.TicketType.ValueType] = {
    short_name(catalog_pb2.TicketType, value, "").lower().replace("_", "-"): value
    for value in catalog_pb2.TicketType.values()
    if short_name(catalog_pb2.TicketType, value, "")
}


def ticket_type_name(value: int, default: str = "dinner") -> str:
    """``TICKET_TYPE_EXPERIENCE_ONLY`` -> ``"experience-only"``; ``default`` when unknown."""
    name = short_name(catalog_pb2.TicketType, value, "")
    return name.lower().replace("_", "-") if name else default


class HealthService(Protocol):
    """The part of ``grpc.health.v1.Health`` clients call (grpcio-health ships no type hints)."""

    def Check(
        self, request: health_pb2.HealthCheckRequest, *, timeout: float | None = None
    ) -> Awaitable[health_pb2.HealthCheckResponse]: ...


# ---- channels and stubs ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves itself and checks the service: a bearer token (a JWT listing the
    caller's roles, ``slotlock.auth``) sent on every call, and TLS (the services' CA, and a
    client certificate where the services require one). The default is plain text without a
    token: fine for health checks, refused for every slotlock RPC by a secured service."""

    token: str = ""
    tls: ClientTLS = field(default_factory=ClientTLS)

    @classmethod
    def read(cls, read: Reader) -> ClientSecurity:
        """``SLOTLOCK_TOKEN`` and ``SLOTLOCK_TLS_CA_FILE`` / ``SLOTLOCK_TLS_CLIENT_*_FILE``."""
        return cls(token=read.text("SLOTLOCK_TOKEN", ""), tls=ClientTLS.read(read))


def _with_token(details: Any, token: str, make: Callable[..., Any]) -> Any:
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
    return make(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
        **({"compression": details.compression} if hasattr(details, "compression") else {}),
    )


def _aio_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """One interceptor per call shape (grpc.aio files each under one shape only). An interceptor
    rather than call credentials so the token also goes over plain text (tests, benchmarks)."""

    def add(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return _with_token(details, token, grpc.aio.ClientCallDetails)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(add(details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_stream(
            self, continuation: Any, details: Any, request: Any
        ) -> Any:
            return await continuation(add(details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_unary(
            self, continuation: Any, details: Any, requests: Any
        ) -> Any:
            return await continuation(add(details), requests)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_stream(
            self, continuation: Any, details: Any, requests: Any
        ) -> Any:
            return await continuation(add(details), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


class _SyncCallDetails(
    collections.namedtuple(  # grpc's own call details are built this way
        "_SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, token: str) -> None:
        self._token = token

    def _add(self, details: Any) -> Any:
        return _with_token(details, self._token, _SyncCallDetails)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._add(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._add(details), requests)


def open_channel(address: str, security: ClientSecurity | None = None) -> grpc.aio.Channel:
    """A channel to ``address`` with slotlock's options, TLS and token as ``security`` says:
    the one place every async client opens one. Call it inside the event loop that will use
    the channel."""
    security = security or ClientSecurity()
    interceptors = _aio_token_interceptors(security.token) if security.token else None
    credentials = security.tls.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(
            address, options=CHANNEL_OPTIONS, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        address, credentials, options=CHANNEL_OPTIONS, interceptors=interceptors
    )


def open_sync_channel(address: str, security: ClientSecurity | None = None) -> grpc.Channel:
    """``open_channel`` for blocking code (the dev harness, its seeding, readiness probes)."""
    security = security or ClientSecurity()
    credentials = security.tls.credentials()
    channel = (
        grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        if credentials is None
        else grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    )
    if security.token:
        return grpc.intercept_channel(channel, _SyncToken(security.token))
    return channel


class Services:
    """Typed async stubs of both services, one channel per address (they may be the same)."""

    def __init__(
        self,
        reservation_addr: str,
        availability_addr: str,
        *,
        security: ClientSecurity | None = None,
    ) -> None:
        self.reservation_addr = reservation_addr
        self.availability_addr = availability_addr
        self._channels: dict[str, grpc.aio.Channel] = {}
        reservation = self._channel(reservation_addr, security)
        availability = self._channel(availability_addr, security)
        # The generated stubs' ``__new__`` overloads pick the async stub type for an aio channel;
        # grpcio ships no type hints, so mypy cannot tell the channel kinds apart: say it here.
        self.reservations = cast(
            "ReservationServiceAsyncStub", reservation_pb2_grpc.ReservationServiceStub(reservation)
        )
        self.availability = cast(
            "AvailabilityServiceAsyncStub",
            availability_pb2_grpc.AvailabilityServiceStub(availability),
        )
        self.availability_health: HealthService = health_pb2_grpc.HealthStub(availability)

    def _channel(self, address: str, security: ClientSecurity | None) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, security)
        return self._channels[address]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---- paging ------------------------------------------------------------------------------------


class PageRequest(Protocol):
    page_token: str


class PageReply(Protocol):
    @property
    def next_page_token(self) -> str: ...


RequestT = TypeVar("RequestT", bound=PageRequest)
ReplyT = TypeVar("ReplyT", bound=PageReply)
ItemT = TypeVar("ItemT")


RequestT_contra = TypeVar("RequestT_contra", bound=PageRequest, contravariant=True)
ReplyT_co = TypeVar("ReplyT_co", bound=PageReply, covariant=True)


class UnaryCall(Protocol[RequestT_contra, ReplyT_co]):
    """What a unary RPC of an async stub looks like to a caller."""

    def __call__(
        self, request: RequestT_contra, *, timeout: float | None = None
    ) -> Awaitable[ReplyT_co]: ...


async def paginate(
    rpc: UnaryCall[RequestT, ReplyT],
    request: RequestT,
    items: Callable[[ReplyT], Iterable[ItemT]],
    *,
    timeout: float | None = None,
) -> AsyncIterator[ItemT]:
    """Every item of a ``List*`` call, page after page, until the service gives no next token.

    ``request`` carries the filters and page size; its ``page_token`` is set for each page (the
    caller's request object is changed in place, so pass a fresh one). ``timeout`` bounds each
    page's call, not the whole walk."""
    while True:
        reply = await rpc(request, timeout=timeout)
        for item in items(reply):
            yield item
        if not reply.next_page_token:
            return
        request.page_token = reply.next_page_token


# ---- readable errors ---------------------------------------------------------------------------


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and the service's message of a failed call (one line, never empty)."""
    code: grpc.StatusCode = error.code()
    details = error.details()
    return code, " ".join(str(details or code.name).split())


def is_transport_failure(code: grpc.StatusCode, details: str) -> bool:
    """True when gRPC itself could not reach the service (as opposed to the service saying why it
    is unavailable in its own words)."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    lowered = details.lower()
    return details in ("", code.name) or any(word in lowered for word in _TRANSPORT_WORDS)


def describe_error(
    error: grpc.RpcError,
    service: str,
    *,
    address: str | None = None,
    timeout_s: float | None = None,
) -> str:
    """One failed call as one readable clause, in lower case so callers can prefix it.

    A service that cannot be reached, answers too late or goes away is described in plain words
    (gRPC's transport messages are for network debugging); ``address`` is for operators, who can
    act on it, and makes the sentence say where and suggest a check. A refusal keeps the
    service's own message (written for people), followed by the status in words."""
    code, details = status_of(error)
    where = f" at {address}" if address else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if is_transport_failure(code, details):
            hint = " (is it running?)" if address else " right now"
            return f"the {service} service{where} is not reachable{hint}"
        return f"the {service} service{where} is unavailable: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f"within {timeout_s:g}s" if timeout_s is not None else "in time"
        return f"the {service} service{where} did not answer {within}"
    if code == grpc.StatusCode.CANCELLED:
        return f"the {service} service{where} went away"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"the {service} service{where} failed: {details}"
    return f"{details} ({code.name.lower().replace('_', ' ')})"


# ---- resumable watch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """How long to wait before reconnect attempt ``attempt`` (0, 1, ...): doubling from
    ``initial_s`` up to ``max_s``, spread by +/- ``jitter`` (a share) so that many clients that
    lost the same service do not all come back in the same instant."""

    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: float) -> float:
        """``rand`` is uniform in [0, 1) (``random.random()``); passed in so tests need no seed."""
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))


class NotServing(Exception):
    """The service answers but is not ready (the availability service rebuilds its view first)."""


class AvailabilityWatch:
    """WatchAvailability that resumes after the service goes away, for as long as it is iterated.

    Each (re)connection first asks the health service whether the feed is ready (the watch says
    nothing until something changes, so it cannot tell), then opens the watch with
    ``known_versions``, so the service sends only what changed meanwhile. Only updates strictly
    newer than the version held are yielded (``slotlock.conflation.is_newer``, the rule the
    projection and the gateway's fan-out use too). ``on_status(live, reason)`` reports
    ``(True, "live")`` once a watch is open and ``(False, reason)`` after each failure, ``reason``
    being a readable clause. Status codes outside ``retry_codes`` end the iteration with the
    error; ``retry_codes=None`` retries every status (a gateway must never stop its feed)."""

    def __init__(
        self,
        stub: AvailabilityServiceAsyncStub,
        health: HealthService,
        *,
        event_ids: Sequence[str] = (),
        known_versions: Mapping[str, int] | None = None,
        backoff: Backoff = Backoff(),
        check_timeout_s: float = 5.0,
        retry_codes: Collection[grpc.StatusCode] | None = TRANSIENT_CODES,
        on_status: Callable[[bool, str], None] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._stub = stub
        self._health = health
        self._event_ids = sorted(event_ids)
        self.known_versions: dict[str, int] = dict(known_versions or {})
        self._backoff = backoff
        self._check_timeout_s = check_timeout_s
        self._retry_codes = retry_codes
        self._on_status = on_status or (lambda live, reason: None)
        self._rand = rand

    def __aiter__(self) -> AsyncIterator[availability_pb2.EventAvailability]:
        return self._run()

    async def _run(self) -> AsyncIterator[availability_pb2.EventAvailability]:
        attempt = 0
        while True:
            try:
                await self._check_serving()
                call = self._stub.WatchAvailability(
                    availability_pb2.WatchAvailabilityRequest(
                        event_ids=self._event_ids, known_versions=self.known_versions
                    )
                )
                try:
                    self._on_status(True, "live")
                    async for update in call:
                        attempt = 0
                        held = self.known_versions.get(update.event_id)
                        if conflation.is_newer(update.version, held):
                            self.known_versions[update.event_id] = update.version
                            yield update
                finally:
                    call.cancel()
                reason = "the availability service closed the stream"
            except grpc.RpcError as error:
                code, details = status_of(error)
                if self._retry_codes is not None and code not in self._retry_codes:
                    raise
                log.debug("availability watch failed: %s %s", code.name, details)
                reason = describe_error(error, "availability")
            except NotServing as error:
                reason = str(error)
            self._on_status(False, reason)
            await asyncio.sleep(self._backoff.delay(attempt, self._rand()))
            attempt += 1

    async def _check_serving(self) -> None:
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=self._check_timeout_s
        )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise NotServing("the availability service is starting up")
