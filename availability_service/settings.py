"""The availability service's settings: one frozen object, read from the environment once, in
``__main__``, and passed down. Bad values fail at start with one readable line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from availability_service.projection import BadgePolicy
from slotlock.feed import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, Feed

_DEFAULT_BADGES = BadgePolicy()


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    feed: Feed = field(default_factory=Feed)
    host: str = "127.0.0.1"
    port: int = 50052  # 0 = pick a free port (logged)
    badge_policy: BadgePolicy = field(default_factory=BadgePolicy)
    max_watchers: int = 10_000
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        def text(name: str, default: str) -> str:
            value = environ.get(name, "").strip()
            return value or default

        def integer(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
            raw = text(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer") from None
            if value < minimum or (maximum is not None and value > maximum):
                bounds = f">= {minimum}" if maximum is None else f"within [{minimum}, {maximum}]"
                raise SettingsError(f"{name}={raw!r} must be {bounds}")
            return value

        def ratio(name: str, default: float) -> float:
            raw = text(name, str(default))
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"{name}={raw!r} must be within [0, 1]")
            return value

        nats_url = text("SLOTLOCK_NATS_URL", cls.nats_url)
        if not nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise SettingsError(f"SLOTLOCK_NATS_URL={nats_url!r} is not a nats:// URL")
        stream = text("SLOTLOCK_STREAM", DEFAULT_STREAM)
        if any(c in stream for c in " .*>"):
            raise SettingsError(f"SLOTLOCK_STREAM={stream!r} may not contain spaces, '.', '*', '>'")
        prefix = text("SLOTLOCK_SUBJECT_PREFIX", DEFAULT_SUBJECT_PREFIX)
        if any(c in prefix for c in " *>") or prefix.startswith(".") or prefix.endswith("."):
            raise SettingsError(f"SLOTLOCK_SUBJECT_PREFIX={prefix!r} is not a subject prefix")
        log_level = text("SLOTLOCK_LOG_LEVEL", cls.log_level).upper()
        if not isinstance(logging.getLevelName(log_level), int):
            raise SettingsError(f"SLOTLOCK_LOG_LEVEL={log_level!r} is not a logging level")
        return cls(
            nats_url=nats_url,
            feed=Feed(stream=stream, subject_prefix=prefix),
            host=text("SLOTLOCK_AVAILABILITY_HOST", cls.host),
            port=integer("SLOTLOCK_AVAILABILITY_PORT", cls.port, 0, 65535),
            badge_policy=BadgePolicy(
                few_left=integer("SLOTLOCK_BADGE_FEW_LEFT", _DEFAULT_BADGES.few_left, 0),
                share=ratio("SLOTLOCK_BADGE_SHARE", _DEFAULT_BADGES.share),
            ),
            max_watchers=integer("SLOTLOCK_MAX_WATCHERS", cls.max_watchers, 1),
            log_level=log_level,
        )
