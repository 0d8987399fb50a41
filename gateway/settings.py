"""The gateway's one settings object, read from the environment in ``__main__`` only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build from ``SLOTLOCK_*`` variables; a malformed value raises ValueError naming it."""
        source = os.environ if env is None else env
        defaults = cls()
        return cls(
            host=source.get("SLOTLOCK_GATEWAY_HOST", defaults.host),
            port=_port(source, "SLOTLOCK_GATEWAY_PORT", defaults.port),
            reservation_addr=source.get("SLOTLOCK_RESERVATION_ADDR", defaults.reservation_addr),
            availability_addr=source.get("SLOTLOCK_AVAILABILITY_ADDR", defaults.availability_addr),
            rpc_timeout_s=_float(source, "SLOTLOCK_GATEWAY_RPC_TIMEOUT_S", defaults.rpc_timeout_s),
            log_level=_log_level(source, "SLOTLOCK_LOG_LEVEL", defaults.log_level),
        )


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port number (0-65535), not {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"{name} must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
    return value
