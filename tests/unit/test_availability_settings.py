"""Settings come from the environment once, with one readable line per bad value."""

from __future__ import annotations

import pytest

from availability_service.settings import Settings, SettingsError
from tests.support import SECURE_ENV


def test_defaults() -> None:
    settings = Settings.from_env(SECURE_ENV)
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.feed.stream == "SLOTLOCK_EVENTS"
    assert settings.feed.subject_prefix == "slotlock.event"
    assert (settings.host, settings.port) == ("127.0.0.1", 50052)
    assert (settings.badge_policy.few_left, settings.badge_policy.share) == (5, 0.2)
    assert settings.max_watchers == 10_000


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            **SECURE_ENV,
            "SLOTLOCK_AVAILABILITY_PORT": "0",
            "SLOTLOCK_BADGE_FEW_LEFT": "3",
            "SLOTLOCK_BADGE_SHARE": "0.25",
            "SLOTLOCK_MAX_WATCHERS": "7",
            "SLOTLOCK_STREAM": "S",
            "SLOTLOCK_SUBJECT_PREFIX": "a.b",
            "SLOTLOCK_LOG_LEVEL": "debug",
        }
    )
    assert settings.port == 0 and settings.max_watchers == 7
    assert settings.badge_policy.few_left == 3 and settings.badge_policy.share == 0.25
    assert settings.feed.subject_for("x") == "a.b.x"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLOTLOCK_AVAILABILITY_PORT", "http"),
        ("SLOTLOCK_AVAILABILITY_PORT", "70000"),
        ("SLOTLOCK_BADGE_FEW_LEFT", "-1"),
        ("SLOTLOCK_BADGE_SHARE", "1.5"),
        ("SLOTLOCK_BADGE_SHARE", "lots"),
        ("SLOTLOCK_MAX_WATCHERS", "0"),
        ("SLOTLOCK_NATS_URL", "localhost:4222"),
        ("SLOTLOCK_STREAM", "a.b"),
        ("SLOTLOCK_SUBJECT_PREFIX", "a.*"),
        ("SLOTLOCK_LOG_LEVEL", "loud"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_workers_share_a_fixed_port() -> None:
    base = dict(SECURE_ENV)
    settings = Settings.from_env(
        {**base, "SLOTLOCK_WORKERS": "2", "SLOTLOCK_AVAILABILITY_PORT": "50052"}
    )
    assert settings.workers == 2
    assert Settings.from_env(base).workers == 1
    with pytest.raises(SettingsError, match="SLOTLOCK_WORKERS must be 1"):
        Settings.from_env({**base, "SLOTLOCK_WORKERS": "2", "SLOTLOCK_AVAILABILITY_PORT": "0"})
    with pytest.raises(SettingsError, match="SLOTLOCK_WORKERS"):
        Settings.from_env({**base, "SLOTLOCK_WORKERS": "0"})
