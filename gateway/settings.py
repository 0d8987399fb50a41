"""The gateway's one settings object, read from the environment in ``__main__`` only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slotlock.client import ClientSecurity
from slotlock.settings import Reader, Telemetry, read_max_seats_per_hold, read_telemetry


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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build from ``SLOTLOCK_*`` variables; a bad value raises ``SettingsError`` naming it."""
        d = cls()
        read = Reader(env)
        return cls(
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
        )
