"""The gateway's one settings object, read from the environment in ``__main__`` only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.security import origin_of
from slotlock.client import ClientSecurity
from slotlock.settings import (
    Reader,
    SettingsError,
    Telemetry,
    check_workers_port,
    read_max_seats_per_hold,
    read_telemetry,
    read_workers,
)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    reservation_addr: str = "127.0.0.1:50051"
    availability_addr: str = "127.0.0.1:50052"
    # Deadline of each unary call: a browser should get an answer (or a clear 503) quickly.
    rpc_timeout_s: float = 5.0
    # Backoff bounds of the shared availability watch while the service is away.
    watch_retry_min_s: float = 0.2
    watch_retry_max_s: float = 5.0
    # SSE comment lines keep proxies from closing an idle stream.
    sse_keepalive_s: float = 15.0
    log_level: str = "INFO"
    telemetry: Telemetry = field(default_factory=Telemetry)
    # Request bodies are a few hundred bytes of JSON; a larger one is refused with 413 before it
    # is read (a client cannot make the gateway buffer megabytes).
    max_body_bytes: int = 16 * 1024
    # The reservation service's limit (same variable), served to the page for its seat picker.
    max_seats_per_hold: int = 10
    # The gateway's own credential towards both services (a booking + reader token) and
    # their CA: SLOTLOCK_TOKEN, SLOTLOCK_TLS_CA_FILE (and a client certificate for mTLS).
    client_security: ClientSecurity = field(default_factory=ClientSecurity)
    # In public (gateway/security.py): origins besides the gateway's own that may post (e.g.
    # "https://shop.example"), holds per client address per minute (0 = no limit), whether the
    # page's simulated "Pay" exists (demo mode: `slotlock dev` turns it on; never in production),
    # and whether the hold cookie is marked Secure (HTTPS only; off for plain-HTTP local runs).
    allowed_origins: tuple[str, ...] = ()
    holds_per_minute: int = 10
    demo_payments: bool = False
    secure_cookies: bool = True
    # Processes sharing the port (SLOTLOCK_WORKERS, SO_REUSEPORT; ``slotlock.workers``): each is a
    # whole gateway with its own availability watch, its browsers and its per-address hold limit.
    workers: int = 1
    # What ``slotlock.workers`` waits for a worker's shutdown: browsers' streams are not waited
    # for (``gateway.__main__.GRACEFUL_SHUTDOWN_S``).
    drain_delay_s: float = 0.0
    shutdown_grace_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from ``SLOTLOCK_*`` variables; a bad value raises ``SettingsError`` naming it."""
        d = cls()
        read = Reader(env)
        settings = cls(
            host=read.text("SLOTLOCK_GATEWAY_HOST", d.host),
            port=read.port("SLOTLOCK_GATEWAY_PORT", d.port),
            reservation_addr=read.address("SLOTLOCK_RESERVATION_ADDR", d.reservation_addr),
            availability_addr=read.address("SLOTLOCK_AVAILABILITY_ADDR", d.availability_addr),
            rpc_timeout_s=read.number(
                "SLOTLOCK_GATEWAY_RPC_TIMEOUT_S", d.rpc_timeout_s, positive=True
            ),
            max_body_bytes=read.integer(
                "SLOTLOCK_GATEWAY_MAX_BODY_BYTES", d.max_body_bytes, minimum=64, maximum=1 << 20
            ),
            log_level=read.log_level("SLOTLOCK_LOG_LEVEL", d.log_level),
            telemetry=read_telemetry(read, "SLOTLOCK_GATEWAY_METRICS_PORT"),
            max_seats_per_hold=read_max_seats_per_hold(read),
            client_security=ClientSecurity.read(read),
            allowed_origins=_origins(read, "SLOTLOCK_GATEWAY_ALLOWED_ORIGINS"),
            holds_per_minute=read.integer(
                "SLOTLOCK_GATEWAY_HOLDS_PER_MINUTE", d.holds_per_minute, minimum=0, maximum=100000
            ),
            demo_payments=read.flag("SLOTLOCK_GATEWAY_DEMO_PAYMENTS", d.demo_payments),
            secure_cookies=read.flag("SLOTLOCK_GATEWAY_SECURE_COOKIES", d.secure_cookies),
            workers=read_workers(read),
        )
        check_workers_port(settings.workers, settings.port, "SLOTLOCK_GATEWAY_PORT")
        return settings


def _origins(read: Reader, name: str) -> tuple[str, ...]:
    """Comma-separated ``scheme://host[:port]`` values."""
    raw = read.raw(name)
    origins = tuple(part.strip() for part in (raw or "").split(",") if part.strip())
    for origin in origins:
        if not origin_of(origin) or origin_of(origin) != origin.lower().rstrip("/"):
            raise SettingsError(
                f"{name} must be comma-separated origins like https://shop.example, not {raw!r}"
            )
    return origins
