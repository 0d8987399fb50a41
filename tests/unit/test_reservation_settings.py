"""The reservation service's settings from the environment (pure: moved here from the
integration tests, where it needed no server)."""

from __future__ import annotations

import pytest

from reservation_service.settings import Settings
from slotlock.settings import SettingsError


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            "SLOTLOCK_HOLD_TTL_S": "1.5",
            "SLOTLOCK_RESERVATION_PORT": "6000",
            "SLOTLOCK_RUN_RELAY": "no",
        }
    )
    assert (settings.hold_ttl_s, settings.port, settings.run_relay) == (1.5, 6000, False)
    assert Settings.from_env({}).hold_ttl_s == 300
    # One error type and one message style for every service now (was InvalidRequest and
    # "SLOTLOCK_HOLD_TTL_S='soon' is not a number"): "<NAME> must be <what>, not '<value>'".
    for env, words in (
        ({"SLOTLOCK_HOLD_TTL_S": "soon"}, "must be a number"),
        ({"SLOTLOCK_RESERVATION_PORT": "70000"}, "between"),
        ({"SLOTLOCK_RUN_EXPIRER": "maybe"}, "true or false"),
    ):
        with pytest.raises(SettingsError, match=words):
            Settings.from_env(env)


def test_several_workers_need_a_fixed_port() -> None:
    with pytest.raises(SettingsError, match="SLOTLOCK_WORKERS must be 1 when"):
        Settings.from_env({"SLOTLOCK_WORKERS": "2", "SLOTLOCK_RESERVATION_PORT": "0"})
