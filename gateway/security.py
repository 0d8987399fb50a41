"""What makes the gateway safe to put in front of the public (README, "The gateway in public").

- Security headers on every response: a strict Content-Security-Policy (the page loads only its
  own scripts and styles, calls only its own API, and may not be framed), ``nosniff``, no
  referrer. Responses carrying a hold token also say ``Cache-Control: no-store`` (routes set it).
- Cross-site writes refused: an API POST whose ``Origin`` is neither the gateway itself (its
  ``Host``) nor a configured allowed origin gets 403, and so does one a browser marks
  ``Sec-Fetch-Site: cross-site``. (A non-JSON body is already 415, so a plain HTML form cannot
  post here at all.) Clients that send neither header (curl, scripts) are not browsers and pass.
- Holds per client limited (``HoldLimiter``): a sliding window per client address, answered 429
  with ``Retry-After``; one anonymous client once held every seat of a 40-seat show in 30 ms.
- The hold cookie: a buyer's hold (reservation id and hold token) in an HttpOnly, SameSite=Strict
  cookie scoped to ``/api/holds``, so a reload can still pay or cancel, scripts on the page cannot
  read it, and another browser (without it) cannot.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

HOLD_COOKIE = "slotlock_hold"
HOLD_COOKIE_PATH = "/api/holds"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` in lower case, or "" for something that is not one."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def cross_site_refusal(
    method: str, headers: dict[str, str], scheme: str, allowed: Iterable[str]
) -> str | None:
    """Why a write must be refused as cross-site, or None. ``headers``: lower-case names."""
    if method not in UNSAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None:
        own = f"{scheme}://{headers.get('host', '').lower()}"
        given = origin_of(origin)
        if given and (given == own or given in {origin_of(a) for a in allowed}):
            return None
        return f"requests from {origin or 'an opaque origin'} may not change bookings here"
    if headers.get("sec-fetch-site", "") == "cross-site":
        return "requests from another site may not change bookings here"
    return None


class SecurityMiddleware:
    """Security headers on every response; cross-site API writes refused with 403 (JSON)."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_origins = tuple(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if scope["path"].startswith("/api/"):
            refusal = cross_site_refusal(
                scope["method"], headers, scope.get("scheme", "http"), self.allowed_origins
            )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in present),
                ]
            await send(message)

        if refusal is not None:
            body = json.dumps({"error": f"Refused: {refusal}.", "code": "CROSS_SITE"}).encode()
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)


class HoldLimiter:
    """At most ``limit`` holds per client in any ``window_s`` seconds (a sliding window: the
    times of its recent holds). ``retry_after`` answers how long until the next one is allowed."""

    def __init__(self, limit: int, window_s: float, *, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._recent: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float | None = None) -> int:
        """0 and counts the hold when ``client`` may hold now; else whole seconds to wait."""
        if self.limit <= 0:
            return 0
        now = time.monotonic() if now is None else now
        recent = self._recent.get(client)
        if recent is None:
            if len(self._recent) >= self.max_clients:
                self._forget_idle(now)
            recent = self._recent[client] = deque()
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if len(recent) >= self.limit:
            return max(1, math.ceil(recent[0] + self.window_s - now))
        recent.append(now)
        return 0

    def _forget_idle(self, now: float) -> None:
        idle = [
            c for c, times in self._recent.items() if not times or times[-1] <= now - self.window_s
        ]
        for client in idle:
            del self._recent[client]
        if len(self._recent) >= self.max_clients:  # all busy: forget the oldest half
            for client in list(self._recent)[: self.max_clients // 2]:
                del self._recent[client]


def hold_cookie_value(reservation_id: str, token: str) -> str:
    return f"{reservation_id}.{token}"


def parse_hold_cookie(value: str | None) -> tuple[str, str] | None:
    """(reservation id, hold token) from the cookie, or None when absent or malformed."""
    if not value:
        return None
    reservation_id, dot, token = value.partition(".")
    if not dot or not reservation_id or not token or len(value) > 300:
        return None
    return reservation_id, token
