"""The gateway's routes: the listing page, availability as JSON and as Server-Sent Events, and
the hold endpoints. Every gRPC failure becomes an HTTP status with the service's readable message;
the gateway keeps no state besides the availability fan-out cache."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway import payloads, security
from gateway.fanout import (
    RETRY,
    AvailabilityFanout,
    Browser,
    Sink,
    SlotSink,
    TooManyWatchers,
    TransportSink,
)
from gateway.settings import Settings
from slotlock import client
from slotlock.v1 import availability_pb2, catalog_pb2, reservation_pb2

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.CANCELLED: 503,
}

Method = Callable[["Gateway", Request], Awaitable[Response]]

_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
# On every response that carries a hold token (or acts on one): never kept by a cache.
NO_STORE = {"Cache-Control": "no-store"}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def rpc_error_response(service: str, error: grpc.RpcError) -> JSONResponse:
    """One gRPC failure as HTTP: the right status and a sentence a person can read."""
    code, message = client.status_of(error)
    status = HTTP_STATUS.get(code, 502)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # The gateway's own credential was refused: the operator's problem, not the buyer's.
        log.error("the %s service refused the gateway's credential: %s", service, message)
        status = 503
    if status == 503:
        # Plain words (describe_error never passes gRPC's transport text on).
        reason = client.describe_error(error, service)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            reason = f"the {service} service is not available right now"
        message = f"{reason[0].upper()}{reason[1:]}. Please try again in a moment."
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        message = "This hold was made in another browser or has ended; please book again."
    elif status == 502:
        log.warning("%s service failed: %s %s", service, code.name, message)
        message = f"The {service} service failed unexpectedly; please try again."
    return error_response(status, code.name, message)


def upstream(service: str) -> Callable[[Method], Method]:
    """Turn the gRPC and request-shape failures of a route into JSON errors."""

    def decorate(handler: Method) -> Method:
        @functools.wraps(handler)
        async def wrapper(self: Gateway, request: Request) -> Response:
            try:
                return await handler(self, request)
            except grpc.RpcError as error:
                return rpc_error_response(service, error)
            except payloads.BadRequest as error:
                return error_response(error.status, error.code, str(error))

        return wrapper

    return decorate


async def json_body(request: Request, limit: int) -> Any:
    """The body as JSON, read only as far as ``limit`` bytes: a larger one is refused from its
    Content-Length before anything is read, or as soon as a chunked body passes the limit.

    The 413 keeps the connection open: uvicorn then discards the rest of the body as it arrives
    (nothing is buffered). Asking it to close instead makes it reset the connection with the
    client's bytes unread, and the client then loses the 413 it was about to read."""
    if not payloads.content_type_is_json(request.headers.get("content-type")):
        raise payloads.NotJson("the request body must be JSON (Content-Type: application/json)")
    declared = set(request.headers.getlist("content-length"))
    if declared:
        (length, *others) = declared
        if others or not _CONTENT_LENGTH.fullmatch(length.strip()):
            raise payloads.BadRequest("Content-Length must be one whole number of bytes")
        if int(length) > limit:
            raise payloads.BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise payloads.BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise payloads.BadRequest("the client went away before sending the whole body") from None
    return payloads.decode_json(b"".join(chunks))


def is_listed(event: dict[str, Any], now: datetime) -> bool:
    """Upcoming and not cancelled: what the listing shows."""
    if event["status"] == "CANCELLED":
        return False
    starts_at = event["starts_at"]
    return starts_at is None or datetime.fromisoformat(starts_at) >= now


# Where ``GatewayApp`` leaves the server's own ASGI ``send`` in the scope: under uvicorn it is a
# method of the connection's request cycle, whose transport the SSE writer writes to directly.
RAW_SEND = "slotlock.raw_send"


def server_transport(send: object) -> asyncio.WriteTransport | None:
    """The connection's transport behind uvicorn's ``send`` (its request cycle keeps it as
    ``transport``); None under any other server, which then gets the plain ASGI path."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


class EventStream(Response):
    """A browser's Server-Sent Events response. The status line and headers go out through
    the middleware (security headers and all); then, under uvicorn, the fan-out's writer
    writes the frames to the connection itself while this waits for the browser to leave.
    Elsewhere the frames go through ``send`` one write at a time."""

    media_type = "text/event-stream"

    def __init__(self, fanout: AvailabilityFanout, browser: Browser) -> None:
        super().__init__(
            status_code=200, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        # No Content-Length: the server frames the body as chunks (HTTP/1.1) or ends it by
        # closing (HTTP/1.0).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.fanout = fanout
        self.browser = browser

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        browser, fanout = self.browser, self.fanout
        try:
            if isinstance(browser.sink, TransportSink):
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                # The framing the server chose for this response: httptools chunks HTTP/1.0
                # responses too (h11 does not; its cycle has no such attribute).
                framing = getattr(
                    getattr(scope.get(RAW_SEND), "__self__", None), "chunked_encoding", None
                )
                if isinstance(framing, bool):
                    browser.sink.chunked = framing
                await send({"type": "http.response.body", "body": RETRY, "more_body": True})
                fanout.start_browser(browser)
                while (await receive())["type"] != "http.disconnect":
                    pass
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                assert isinstance(browser.sink, SlotSink)
                streaming = StreamingResponse(
                    self._writes(browser.sink), headers=dict(self.headers)
                )
                await streaming(scope, receive, send)
        finally:
            fanout.unsubscribe(browser)

    async def _writes(self, sink: SlotSink) -> AsyncIterator[bytes]:
        yield RETRY
        self.fanout.start_browser(self.browser)
        async for data in sink.writes():
            yield data


class GatewayApp(Starlette):
    """Starlette, leaving the server's own ``send`` in the scope for ``Gateway.stream``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


class Gateway:
    """The channels and the fan-out of one app instance; its methods are the routes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: client.Services
        self.fanout: AvailabilityFanout
        self.holds = security.HoldLimiter(settings.holds_per_minute, 60.0)

    async def connect(self) -> None:
        """Open the channels and start the shared watch (inside the server's event loop)."""
        self.services = client.Services(
            self.settings.reservation_addr,
            self.settings.availability_addr,
            security=self.settings.client_security,
        )
        self.fanout = AvailabilityFanout(
            self.services.availability, self.services.availability_health, self.settings
        )
        self.fanout.start()

    async def close(self) -> None:
        await self.fanout.stop()
        await self.services.close()

    async def json_body(self, request: Request) -> Any:
        return await json_body(request, self.settings.max_body_bytes)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> Response:
        """Readiness: 503 while live updates are paused (the availability service is down,
        NOT_SERVING, or behind its feed), so a balancer prefers a gateway whose pages are live."""
        live = self.fanout.live
        return JSONResponse(
            {
                "status": "ok" if live else "degraded",
                "availability_feed": "live" if live else "paused",
                "message": self.fanout.message,
                "watchers": self.fanout.watcher_count,
            },
            status_code=200 if live else 503,
        )

    async def livez(self, request: Request) -> Response:
        """Liveness: the process answers (a paused feed is no reason to restart a gateway)."""
        return JSONResponse({"status": "ok"})

    @upstream("availability")
    async def list_events(self, request: Request) -> Response:
        now = datetime.now(UTC)
        pages = client.paginate(
            self.services.availability.ListAvailability,
            availability_pb2.ListAvailabilityRequest(page_size=500),
            lambda reply: reply.events,
            timeout=self.settings.rpc_timeout_s,
        )
        events = [payloads.availability_json(ev) async for ev in pages]
        listed = [ev for ev in events if is_listed(ev, now)]
        listed.sort(key=lambda ev: (ev["starts_at"] or "", ev["code"]))
        return JSONResponse(
            {
                "events": listed,
                "live": self.fanout.live,
                # The page caps its seat picker with this; the reservation service enforces it.
                "max_seats_per_hold": self.settings.max_seats_per_hold,
                "demo_payments": self.settings.demo_payments,  # shows the simulated Pay
            }
        )

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events: the feed status, every event's state, then every change."""
        raw_send = request.scope.get(RAW_SEND)
        # Raw writes only where the connection carries this one response as HTTP/1.x bytes
        # (under an HTTP/2 server the transport is shared by many streams' frames).
        direct = request.method == "GET" and request.scope.get("http_version") in ("1.0", "1.1")
        transport = server_transport(raw_send) if direct else None
        sink: Sink
        if transport is not None:
            sink = TransportSink(transport, chunked=request.scope.get("http_version") == "1.1")
        else:
            sink = SlotSink()
        try:
            browser = self.fanout.subscribe(sink)
        except TooManyWatchers as error:
            return error_response(503, "UNAVAILABLE", str(error))
        return EventStream(self.fanout, browser)

    def _set_hold_cookie(
        self, response: Response, reservation_id: str, token: str, ttl: float
    ) -> None:
        response.set_cookie(
            security.HOLD_COOKIE,
            security.hold_cookie_value(reservation_id, token),
            max_age=max(1, int(ttl) + 60),
            path=security.HOLD_COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
        )

    def _clear_hold_cookie(self, response: Response) -> None:
        response.delete_cookie(
            security.HOLD_COOKIE,
            path=security.HOLD_COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookies,
        )

    def _cookie_token(self, request: Request, reservation_id: str) -> str:
        """The hold token from this browser's hold cookie, if the cookie is for this hold."""
        held = security.parse_hold_cookie(request.cookies.get(security.HOLD_COOKIE))
        return held[1] if held is not None and held[0] == reservation_id else ""

    @upstream("reservation")
    async def create_hold(self, request: Request) -> Response:
        address = request.client.host if request.client is not None else "unknown"
        wait_s = self.holds.retry_after(address)
        if wait_s:
            response = error_response(
                429,
                "RESOURCE_EXHAUSTED",
                f"Too many holds from here; please wait {wait_s} s and try again.",
            )
            response.headers["Retry-After"] = str(wait_s)
            return response
        hold = payloads.parse_hold_request(await self.json_body(request))
        if not hold.idempotency_key:
            hold.idempotency_key = str(uuid.uuid4())
        # A buyer on the public page has no customer identity this sample can vouch for, so
        # whatever the body says is dropped: a chosen customer_ref would let one visitor spend
        # (or dodge) another customer's per-customer seat limit, and one shared value would
        # make that limit apply to every web buyer together. Holds without one are not
        # limited per customer; a checkout service that knows its buyers sets it itself.
        hold.customer_ref = ""
        reply = await self.services.reservations.CreateHold(
            hold, timeout=self.settings.rpc_timeout_s
        )
        body = payloads.hold_json(reply, datetime.now(UTC))
        response = JSONResponse(body, status_code=201, headers=NO_STORE)
        self._set_hold_cookie(
            response, reply.reservation.id, reply.hold_token, body["expires_in_s"] or 0.0
        )
        return response

    @upstream("reservation")
    async def current_hold(self, request: Request) -> Response:
        """This browser's hold (from its cookie) while it is PENDING: after a reload the page
        can still pay or cancel it. 404 when there is none (the cookie is then cleared)."""
        held = security.parse_hold_cookie(request.cookies.get(security.HOLD_COOKIE))
        if held is None:
            return error_response(404, "NOT_FOUND", "No hold in this browser.")
        reservation_id, token = held
        try:
            reservation: catalog_pb2.Reservation = await self.services.reservations.GetReservation(
                reservation_pb2.GetReservationRequest(
                    reservation_id=reservation_id, hold_token=token
                ),
                timeout=self.settings.rpc_timeout_s,
            )
        except grpc.RpcError as error:
            code, _ = client.status_of(error)
            if code not in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise
            reservation = catalog_pb2.Reservation()
        if reservation.status != catalog_pb2.RESERVATION_STATUS_PENDING:
            response = error_response(404, "NOT_FOUND", "No hold in this browser.")
            self._clear_hold_cookie(response)
            return response
        body = payloads.hold_json(
            reservation_pb2.CreateHoldResponse(reservation=reservation), datetime.now(UTC)
        )
        body.pop("hold_token")  # the cookie carries it; scripts need not see it
        return JSONResponse(body, headers=NO_STORE)

    @upstream("reservation")
    async def pay_hold(self, request: Request) -> Response:
        reservation_id = payloads.check_path_text(
            "reservation_id", request.path_params["reservation_id"]
        )
        token = payloads.parse_hold_token(
            await self.json_body(request), self._cookie_token(request, reservation_id)
        )
        # Payment is simulated (demo mode only): a real gateway gets this from the provider.
        reference = f"SIM-{uuid.uuid4().hex[:12].upper()}"
        reservation: catalog_pb2.Reservation = await self.services.reservations.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=reservation_id,
                hold_token=token,
                payment_reference=reference,
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        response = JSONResponse(
            {"reservation": payloads.reservation_json(reservation)}, headers=NO_STORE
        )
        self._clear_hold_cookie(response)
        return response

    @upstream("reservation")
    async def cancel_hold(self, request: Request) -> Response:
        reservation_id = payloads.check_path_text(
            "reservation_id", request.path_params["reservation_id"]
        )
        token = payloads.parse_hold_token(
            await self.json_body(request), self._cookie_token(request, reservation_id)
        )
        reservation: catalog_pb2.Reservation = await self.services.reservations.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(reservation_id=reservation_id, hold_token=token),
            timeout=self.settings.rpc_timeout_s,
        )
        response = JSONResponse(
            {"reservation": payloads.reservation_json(reservation)}, headers=NO_STORE
        )
        self._clear_hold_cookie(response)
        return response


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods: JSON for the API (the page reads ``error``), text else."""
    assert isinstance(exc, HTTPException)
    # The scope's path, not request.url: building the URL decodes the query string, which
    # fails on bytes that are not UTF-8 ("?%80" arrives as b"\x80").
    path = request.scope["path"]
    if path.startswith("/api/"):
        code = "NOT_FOUND" if exc.status_code == 404 else "INVALID_ARGUMENT"
        return error_response(exc.status_code, code, f"{exc.detail}: {request.method} {path}")
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug, never bad input: the server logs the traceback (Starlette re-raises it after this
    answer); the page still gets JSON it can show."""
    if request.scope["path"].startswith("/api/"):
        return error_response(500, "INTERNAL", "The gateway failed unexpectedly; please try again.")
    return PlainTextResponse("Internal Server Error", status_code=500)


def create_app(settings: Settings) -> Starlette:
    """The ASGI app; gRPC channels and the shared watch live as long as its lifespan."""
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.connect()
        try:
            yield
        finally:
            await gateway.close()

    routes = [
        Route("/", gateway.index, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/livez", gateway.livez, methods=["GET"]),
        Route("/api/events", gateway.list_events, methods=["GET"]),
        Route("/api/stream", gateway.stream, methods=["GET"]),
        Route("/api/holds", gateway.create_hold, methods=["POST"]),
        Route("/api/holds/current", gateway.current_hold, methods=["GET"]),
        # The simulated payment exists in demo mode only (`slotlock dev`): in production a
        # payment provider confirms holds, never a button on a public page.
        *(
            [Route("/api/holds/{reservation_id}/pay", gateway.pay_hold, methods=["POST"])]
            if settings.demo_payments
            else []
        ),
        Route("/api/holds/{reservation_id}/cancel", gateway.cancel_hold, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        middleware=[
            Middleware(security.SecurityMiddleware, allowed_origins=settings.allowed_origins)
        ],
    )
    app.state.gateway = gateway
    return app
