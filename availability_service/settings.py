"""The availability service's settings: one frozen object, read from the environment once, in
``__main__``, and passed down. Bad values fail at start with one readable line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from availability_service.projection import BadgePolicy
from slotlock.feed import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, Feed
from slotlock.grpc_server import ServerSecurity
from slotlock.settings import (
    NATS_SCHEMES,
    Reader,
    SettingsError,
    Telemetry,
    check_workers_port,
    read_telemetry,
    read_workers,
)

__all__ = ["Settings", "SettingsError"]

_DEFAULT_BADGES = BadgePolicy()


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    feed: Feed = field(default_factory=Feed)
    host: str = "127.0.0.1"
    port: int = 50052  # 0 = pick a free port (logged)
    badge_policy: BadgePolicy = field(default_factory=BadgePolicy)
    max_watchers: int = 10_000  # per worker process
    # Processes of this replica sharing its port (SO_REUSEPORT; ``slotlock.workers``): each
    # follows the feed itself, keeps its own view and serves the watchers the kernel gives it.
    workers: int = 1
    # Health (README, "Health, drain and outages"): NOT_SERVING while disconnected from NATS or
    # more than max_feed_lag_s behind the feed; on SIGTERM, NOT_SERVING for drain_delay_s, then
    # watch streams end (UNAVAILABLE) and unary calls in flight get shutdown_grace_s.
    max_feed_lag_s: float = 5.0
    drain_delay_s: float = 0.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    telemetry: Telemetry = field(default_factory=Telemetry)
    # Who may call and over what (tokens, TLS, reflection). The default authenticates nobody, so
    # a server refuses to start with it: tests and `slotlock dev` set one up.
    security: ServerSecurity = field(default_factory=ServerSecurity)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Raises ``SettingsError`` with a one-line reason for a bad value."""
        read = Reader(environ)
        return cls(
            nats_url=read.url("SLOTLOCK_NATS_URL", cls.nats_url, schemes=NATS_SCHEMES),
            feed=Feed(
                stream=read.stream_name("SLOTLOCK_STREAM", DEFAULT_STREAM),
                subject_prefix=read.subject_prefix(
                    "SLOTLOCK_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX
                ),
            ),
            host=read.text("SLOTLOCK_AVAILABILITY_HOST", cls.host),
            port=read.port("SLOTLOCK_AVAILABILITY_PORT", cls.port),
            badge_policy=BadgePolicy(
                few_left=read.integer(
                    "SLOTLOCK_BADGE_FEW_LEFT", _DEFAULT_BADGES.few_left, minimum=0
                ),
                share=read.number(
                    "SLOTLOCK_BADGE_SHARE", _DEFAULT_BADGES.share, minimum=0, maximum=1
                ),
            ),
            max_watchers=read.integer("SLOTLOCK_MAX_WATCHERS", cls.max_watchers, minimum=1),
            workers=read_workers(read),
            max_feed_lag_s=read.number(
                "SLOTLOCK_MAX_FEED_LAG_S", cls.max_feed_lag_s, minimum=0.5, maximum=3600
            ),
            drain_delay_s=read.number(
                "SLOTLOCK_DRAIN_DELAY_S", cls.drain_delay_s, minimum=0, maximum=300
            ),
            shutdown_grace_s=read.number(
                "SLOTLOCK_SHUTDOWN_GRACE_S", cls.shutdown_grace_s, minimum=0, maximum=3600
            ),
            log_level=read.log_level("SLOTLOCK_LOG_LEVEL", cls.log_level),
            telemetry=read_telemetry(read, "SLOTLOCK_AVAILABILITY_METRICS_PORT"),
            security=ServerSecurity.read(read),
        ).checked()

    def checked(self) -> Settings:
        """Checks across fields."""
        check_workers_port(self.workers, self.port, "SLOTLOCK_AVAILABILITY_PORT")
        return self
