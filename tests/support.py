"""What tests share besides fixtures: types of fixture values and small checks. Tests import from
here, never from a conftest (pytest loads conftests itself; importing one runs it twice)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import psycopg

from gateway.server import build_server
from gateway.settings import Settings as GatewaySettings
from reservation_service.server import ReservationServer
from slotlock import auth, client
from slotlock.grpc_server import ServerSecurity
from slotlock.identity import ADMIN
from slotlock.tls import ClientTLS

# The ``start_reservation`` fixture: ``await start_reservation(hold_ttl_s=1)``.
StartReservation = Callable[..., Awaitable[ReservationServer]]


def snapshot(database_url: str) -> list[Any]:
    """Everything a refused request must leave untouched."""
    with psycopg.connect(database_url) as conn:
        events = conn.execute(
            "SELECT id, capacity, paid, pending, status, version FROM events ORDER BY id"
        ).fetchall()
        reservations = conn.execute(
            "SELECT id, status, updated_at, provider_order_id, payment_reference"
            " FROM reservations ORDER BY id"
        ).fetchall()
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()
    return [events, reservations, outbox]


# ---- security: every test server checks callers, as production does ---------------------------

# Plain text and HS256 tokens: in-process servers need no certificates. TLS and mutual TLS have
# their own tests (tests/integration/test_security.py); the e2e tests run with both on.
TEST_JWT_SECRET = "slotlock-tests-only-jwt-secret-0123456789"
TEST_SECURITY = ServerSecurity(auth=auth.AuthSettings(jwt_secret=TEST_JWT_SECRET))
# Long enough for from_env (the reservation service refuses a short one outside the tests).
TEST_HOLD_TOKEN_SECRET = "slotlock-tests-only-hold-token-secret-0123456789"


def token_for(*roles: str, subject: str = "tests") -> str:
    """A valid token for ``TEST_SECURITY`` servers with ``roles`` (admin when none given)."""
    return auth.mint_token(TEST_JWT_SECRET, roles or (ADMIN,), subject)


def open_channel(
    address: str, *roles: str, token: str | None = None, tls: ClientTLS | None = None
) -> grpc.aio.Channel:
    """An async channel to a test server, sending a token with ``roles`` (admin when none are
    given; ``token=""`` sends none), over TLS when ``tls`` is given."""
    return client.open_channel(
        address,
        client.ClientSecurity(
            token=token_for(*roles) if token is None else token, tls=tls or ClientTLS()
        ),
    )


# The least environment with which the services' ``from_env`` starts (tests of other settings
# add theirs to it).
SECURE_ENV: dict[str, str] = {
    "SLOTLOCK_AUTH_JWT_SECRET": TEST_JWT_SECRET,
    "SLOTLOCK_INSECURE_PLAINTEXT": "true",
    "SLOTLOCK_HOLD_TOKEN_SECRET": TEST_HOLD_TOKEN_SECRET,
}


@contextlib.asynccontextmanager
async def serving_gateway(settings: GatewaySettings) -> AsyncIterator[tuple[int, Any]]:
    """The gateway served by uvicorn in this event loop: its port and its app (``.state.gateway``);
    stopped on exit."""
    server = build_server(settings, log_level="warning")
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not serving.done(), "the gateway stopped while starting"
        assert time.monotonic() < deadline, "the gateway did not start"
        await asyncio.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1], server.config.app
    finally:
        server.should_exit = True
        await serving


@contextlib.contextmanager
def running_slotlock_dev(
    out_path: Path, env: Mapping[str, str], ports: tuple[int, int, int], *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``slotlock dev ARGS`` on ``ports`` (reservation, availability, gateway; output in
    ``out_path``) once it has printed "Press Ctrl-C" (within 120 s): the process and what it
    printed. On exit it is stopped as Ctrl-C stops it."""
    reservation, availability, gateway = (str(port) for port in ports)
    port_args = ("--reservation-port", reservation, "--availability-port", availability)
    with out_path.open("w") as out:
        dev = subprocess.Popen(
            [
                *(sys.executable, "-m", "slotlock_cli.main", "dev", *args),
                *(*port_args, "--gateway-port", gateway),
            ],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C" not in out_path.read_text():
            assert dev.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.5)
        yield dev, out_path.read_text()
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            dev.kill()


# Headless Chromium for the browser tests (scripts/install-chromium puts it there).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
