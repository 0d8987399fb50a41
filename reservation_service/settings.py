"""The reservation service's settings: one frozen object, read from the environment once in
``__main__`` and passed down. Nothing deeper reads ``os.environ``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from slotlock.errors import InvalidRequest
from slotlock.feed import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, Feed

log = logging.getLogger(__name__)

INSECURE_DEV_SECRET = "slotlock-insecure-dev-secret"


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/slotlock"
    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 50051
    hold_ttl_s: float = 300.0
    max_seats_per_hold: int = 10
    hold_token_secret: str = INSECURE_DEV_SECRET
    db_pool_size: int = 10
    max_batch: int = 256
    expiry_recheck_s: float = 2.0
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    notify_other_replicas: bool = True
    run_relay: bool = True
    run_expirer: bool = True
    workers: int = 1
    log_level: str = "INFO"

    @property
    def hold_ttl(self) -> timedelta:
        return timedelta(seconds=self.hold_ttl_s)

    @property
    def feed(self) -> Feed:
        return Feed(stream=self.stream, subject_prefix=self.subject_prefix)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Raises ``InvalidRequest`` with a one-line reason for a bad value."""
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise InvalidRequest(f"{name}={raw!r} is not a number") from None
            if not low <= value <= high:
                raise InvalidRequest(f"{name}={raw} must be between {low:g} and {high:g}")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise InvalidRequest(f"{name}={raw!r} must be true or false")

        return cls(
            database_url=text("SLOTLOCK_DATABASE_URL", d.database_url),
            nats_url=text("SLOTLOCK_NATS_URL", d.nats_url),
            host=text("SLOTLOCK_RESERVATION_HOST", d.host),
            port=int(number("SLOTLOCK_RESERVATION_PORT", d.port, 0, 65535)),
            hold_ttl_s=number("SLOTLOCK_HOLD_TTL_S", d.hold_ttl_s, 0.1, 86400),
            max_seats_per_hold=int(
                number("SLOTLOCK_MAX_SEATS_PER_HOLD", d.max_seats_per_hold, 1, 10000)
            ),
            hold_token_secret=text("SLOTLOCK_HOLD_TOKEN_SECRET", d.hold_token_secret),
            db_pool_size=int(number("SLOTLOCK_DB_POOL_SIZE", d.db_pool_size, 2, 200)),
            max_batch=int(number("SLOTLOCK_MAX_BATCH", d.max_batch, 1, 10000)),
            expiry_recheck_s=number("SLOTLOCK_EXPIRY_RECHECK_S", d.expiry_recheck_s, 0.05, 60),
            stream=text("SLOTLOCK_STREAM", d.stream),
            subject_prefix=text("SLOTLOCK_SUBJECT_PREFIX", d.subject_prefix),
            notify_other_replicas=flag("SLOTLOCK_NOTIFY_OTHER_REPLICAS", d.notify_other_replicas),
            run_relay=flag("SLOTLOCK_RUN_RELAY", d.run_relay),
            run_expirer=flag("SLOTLOCK_RUN_EXPIRER", d.run_expirer),
            workers=int(number("SLOTLOCK_WORKERS", d.workers, 1, 64)),
            log_level=text("SLOTLOCK_LOG_LEVEL", d.log_level).upper(),
        ).checked()

    def checked(self) -> Settings:
        if self.workers > 1 and self.port == 0:
            raise InvalidRequest("SLOTLOCK_WORKERS > 1 needs a fixed SLOTLOCK_RESERVATION_PORT")
        return self
