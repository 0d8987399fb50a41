"""The gateway's routes: the listing page, availability as JSON and as Server-Sent Events, and
the hold endpoints. Every gRPC failure becomes an HTTP status with the service's readable message;
the gateway keeps no state besides the availability fan-out cache."""

from __future__ import annotations

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

from gateway import payloads
from gateway.fanout import AvailabilityFanout, TooManyWatchers
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


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def rpc_error_response(service: str, error: grpc.RpcError) -> JSONResponse:
    """One gRPC failure as HTTP: the right status and a sentence a person can read."""
    code, message = client.status_of(error)
    status = HTTP_STATUS.get(code, 502)
    if status == 503:
        reason = client.describe_error(error, service)
        message = f"{reason[0].upper()}{reason[1:]}. Please try again in a moment."
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


class Gateway:
    """The channels and the fan-out of one app instance; its methods are the routes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: client.Services
        self.fanout: AvailabilityFanout

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
            }
        )

    async def stream(self, request: Request) -> Response:
        try:
            watcher = self.fanout.subscribe()
        except TooManyWatchers as error:
            return error_response(503, "UNAVAILABLE", str(error))
        keepalive = self.settings.sse_keepalive_s

        async def frames() -> AsyncIterator[bytes]:
            try:
                # Tell EventSource to come back quickly if the gateway restarts.
                yield b"retry: 1000\n\n"
                while not watcher.closed:
                    for chunk in await watcher.next_writes(keepalive):
                        yield chunk
            finally:
                self.fanout.unsubscribe(watcher)

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @upstream("reservation")
    async def create_hold(self, request: Request) -> Response:
        hold = payloads.parse_hold_request(await self.json_body(request))
        if not hold.idempotency_key:
            hold.idempotency_key = str(uuid.uuid4())
        if not hold.customer_ref:
            hold.customer_ref = "web"
        reply = await self.services.reservations.CreateHold(
            hold, timeout=self.settings.rpc_timeout_s
        )
        return JSONResponse(payloads.hold_json(reply, datetime.now(UTC)), status_code=201)

    @upstream("reservation")
    async def pay_hold(self, request: Request) -> Response:
        reservation_id = payloads.check_path_text(
            "reservation_id", request.path_params["reservation_id"]
        )
        token = payloads.parse_hold_token(await self.json_body(request))
        # Payment is simulated: a real gateway would get this reference from the provider.
        reference = f"SIM-{uuid.uuid4().hex[:12].upper()}"
        reservation: catalog_pb2.Reservation = await self.services.reservations.ConfirmHold(
            reservation_pb2.ConfirmHoldRequest(
                reservation_id=reservation_id,
                hold_token=token,
                payment_reference=reference,
            ),
            timeout=self.settings.rpc_timeout_s,
        )
        return JSONResponse({"reservation": payloads.reservation_json(reservation)})

    @upstream("reservation")
    async def cancel_hold(self, request: Request) -> Response:
        reservation_id = payloads.check_path_text(
            "reservation_id", request.path_params["reservation_id"]
        )
        token = payloads.parse_hold_token(await self.json_body(request))
        reservation: catalog_pb2.Reservation = await self.services.reservations.ReleaseHold(
            reservation_pb2.ReleaseHoldRequest(reservation_id=reservation_id, hold_token=token),
            timeout=self.settings.rpc_timeout_s,
        )
        return JSONResponse({"reservation": payloads.reservation_json(reservation)})


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
        Route("/api/holds/{reservation_id}/pay", gateway.pay_hold, methods=["POST"]),
        Route("/api/holds/{reservation_id}/cancel", gateway.cancel_hold, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.gateway = gateway
    return app
