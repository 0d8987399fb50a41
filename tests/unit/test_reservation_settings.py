"""The reservation service's settings from the environment (pure: moved here from the
integration tests, where it needed no server)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from reservation_service.errors import WrongHoldToken
from reservation_service.holds import HoldTokens
from reservation_service.settings import Settings
from slotlock import settings as slotlock_settings
from slotlock.settings import SettingsError
from tests.support import SECURE_ENV, TEST_HOLD_TOKEN_SECRET


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {
            **SECURE_ENV,
            "SLOTLOCK_HOLD_TTL_S": "1.5",
            "SLOTLOCK_RESERVATION_PORT": "6000",
            "SLOTLOCK_RUN_RELAY": "no",
        }
    )
    assert (settings.hold_ttl_s, settings.port, settings.run_relay) == (1.5, 6000, False)
    assert Settings.from_env(SECURE_ENV).hold_ttl_s == 300
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
        Settings.from_env({**SECURE_ENV, "SLOTLOCK_WORKERS": "2", "SLOTLOCK_RESERVATION_PORT": "0"})


# Past the security settings' checks (a closed test network), so that only ours are tested.
CLOSED_NETWORK = {
    "SLOTLOCK_INSECURE_NO_AUTH": "true",
    "SLOTLOCK_INSECURE_PLAINTEXT": "true",
    "SLOTLOCK_HOLD_TOKEN_SECRET": TEST_HOLD_TOKEN_SECRET,
}


def test_lifecycle_and_retention_settings() -> None:
    d = Settings.from_env(CLOSED_NETWORK)
    assert d.migrate_on_start is True
    assert d.retention.keep_published_outbox_s == 86400
    assert d.retention.keep_past_event_subjects_s == 7 * 86400
    assert d.retention.keep_finished_reservations_s == 0  # keep forever unless asked
    assert d.feed.max_age_s == 0
    s = Settings.from_env(
        {
            **CLOSED_NETWORK,
            "SLOTLOCK_MIGRATE_ON_START": "false",
            "SLOTLOCK_OUTBOX_KEEP_PUBLISHED_S": "3600",
            "SLOTLOCK_STREAM_MAX_AGE_S": "2592000",
            "SLOTLOCK_STREAM_KEEP_PAST_EVENTS_S": "0",
            "SLOTLOCK_KEEP_FINISHED_RESERVATIONS_S": "31536000",
        }
    )
    assert s.migrate_on_start is False
    assert s.feed.max_age_s == 2592000
    assert s.retention.keep_published_outbox_s == 3600
    assert s.retention.subject_horizon(datetime.now(UTC)) is None
    assert s.retention.keep_finished_reservations_s == 31536000
    # A period meant as days or hours but given as a small number would delete at once.
    with pytest.raises(
        SettingsError, match=r"must be 0 \(keep forever\) or at least 3600, not '30'"
    ):
        Settings.from_env({**CLOSED_NETWORK, "SLOTLOCK_KEEP_FINISHED_RESERVATIONS_S": "30"})


# -- the hold-token secret fails closed (issue 9, item 4) --------------------------------------

LONG_SECRET = "a" * 32


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        (None, "SLOTLOCK_HOLD_TOKEN_SECRET is not set"),
        ("", "SLOTLOCK_HOLD_TOKEN_SECRET is not set"),
        (" , ", "SLOTLOCK_HOLD_TOKEN_SECRET is not set"),
        ("x" * 31, "must be at least 32 bytes, not 31 bytes"),
        ("change-me-to-a-long-random-value", "is a published placeholder"),
        ("slotlock-insecure-dev-secret", "is a published placeholder"),
        ("please-change-me-" + "x" * 32, "is a published placeholder"),
        (f"{LONG_SECRET},short", r"at least 32 bytes \(secret 2 of 2\)"),
    ],
)
def test_reservation_service_refuses_a_missing_short_or_placeholder_secret(
    secret: str | None, words: str
) -> None:
    env = {k: v for k, v in CLOSED_NETWORK.items() if k != "SLOTLOCK_HOLD_TOKEN_SECRET"}
    if secret is not None:
        env["SLOTLOCK_HOLD_TOKEN_SECRET"] = secret
    with pytest.raises(SettingsError, match=words) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert "\n" not in message
    assert secret is None or not secret.strip(" ,") or secret not in message  # never echoed


def test_the_reservation_service_exits_with_one_line_without_a_secret() -> None:
    out = io.StringIO()
    env = {k: v for k, v in CLOSED_NETWORK.items() if k != "SLOTLOCK_HOLD_TOKEN_SECRET"}
    with pytest.raises(SystemExit) as exit_:
        slotlock_settings.load("slotlock-reservation", Settings.from_env, env, stderr=out)
    assert exit_.value.code == 2
    assert out.getvalue().count("\n") == 1
    assert out.getvalue().startswith("slotlock-reservation: SLOTLOCK_HOLD_TOKEN_SECRET is not set")


def test_several_secrets_sign_with_the_first_and_accept_all() -> None:
    old, new = "o" * 32, "n" * 40
    s = Settings.from_env({**CLOSED_NETWORK, "SLOTLOCK_HOLD_TOKEN_SECRET": f" {new} , {old} "})
    assert (s.hold_token_secret, s.previous_hold_token_secrets) == (new, (old,))
    rotated = HoldTokens(s.hold_token_secret.encode(), (old.encode(),))
    issued_before = HoldTokens(old.encode()).token_for("r1")
    rotated.check("r1", issued_before)  # a hold taken before the rotation can still be paid
    assert rotated.token_for("r1") == HoldTokens(new.encode()).token_for("r1") != issued_before
    with pytest.raises(WrongHoldToken):
        HoldTokens(new.encode()).check("r1", issued_before)  # once the old one is dropped
    with pytest.raises(WrongHoldToken):
        rotated.check("r1", HoldTokens(b"x" * 32).token_for("r1"))
