"""The one settings reader: every cast, its one message style, and unknown ``SLOTLOCK_*`` names.

Two bugs it fixes: ``SLOTLOCK_LOG_LEVEL=loud`` used to pass the reservation service's settings
and end in a traceback inside ``logging``; ``SLOTLOCK_RESERVATION_PORT=50051.9`` used to be
truncated to 50051 without a word."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest

from availability_service.settings import Settings as AvailabilitySettings
from gateway.settings import Settings as GatewaySettings
from reservation_service.settings import Settings as ReservationSettings
from slotlock import settings
from slotlock.settings import KNOWN_VARIABLES, Reader, SettingsError
from tests.support import SECURE_ENV


def test_unset_and_empty_mean_the_default() -> None:
    read = Reader({"SLOTLOCK_A": "", "SLOTLOCK_B": "   "})
    assert read.text("SLOTLOCK_A", "x") == "x"
    assert read.integer("SLOTLOCK_B", 7) == 7
    assert read.number("SLOTLOCK_C", 1.5) == 1.5
    assert read.flag("SLOTLOCK_C", True) is True
    assert read.log_level("SLOTLOCK_C", "INFO") == "INFO"


def test_text_is_stripped() -> None:
    assert Reader({"SLOTLOCK_A": "  host  "}).text("SLOTLOCK_A", "x") == "host"


@pytest.mark.parametrize(("raw", "value"), [("5", 5), ("-3", -3), ("+8", 8), (" 42 ", 42)])
def test_integer(raw: str, value: int) -> None:
    assert Reader({"SLOTLOCK_N": raw}).integer("SLOTLOCK_N", 0) == value


@pytest.mark.parametrize("raw", ["50051.9", "5e3", "0x10", "1_000", "ten", "5 1"])
def test_integer_refuses_anything_but_a_whole_number(raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        Reader({"SLOTLOCK_N": raw}).integer("SLOTLOCK_N", 0)
    assert str(error.value) == f"SLOTLOCK_N must be an integer, not {raw.strip()!r}"


def test_a_fractional_port_is_refused_not_truncated() -> None:
    with pytest.raises(SettingsError, match="SLOTLOCK_RESERVATION_PORT must be an integer"):
        ReservationSettings.from_env({"SLOTLOCK_RESERVATION_PORT": "50051.9"})


@pytest.mark.parametrize(
    ("kwargs", "raw", "words"),
    [
        ({"minimum": 1, "maximum": 5}, "6", "must be between 1 and 5, not '6'"),
        ({"minimum": 1}, "0", "must be at least 1, not '0'"),
        ({"maximum": 5}, "9", "must be at most 5, not '9'"),
    ],
)
def test_integer_bounds(kwargs: dict[str, int], raw: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Reader({"SLOTLOCK_N": raw}).integer("SLOTLOCK_N", 1, **kwargs)


def test_port() -> None:
    assert Reader({"SLOTLOCK_P": "0"}).port("SLOTLOCK_P", 1) == 0
    with pytest.raises(SettingsError, match="between 0 and 65535, not '65536'"):
        Reader({"SLOTLOCK_P": "65536"}).port("SLOTLOCK_P", 1)


def test_number() -> None:
    assert Reader({"SLOTLOCK_S": "0.25"}).number("SLOTLOCK_S", 1.0) == 0.25
    assert Reader({"SLOTLOCK_S": "3"}).number("SLOTLOCK_S", 1.0) == 3.0
    for raw, words in [
        ("soon", "must be a number, not 'soon'"),
        ("nan", "must be a finite number, not 'nan'"),
        ("inf", "must be a finite number, not 'inf'"),
        ("2", "must be between 0 and 1, not '2'"),
    ]:
        with pytest.raises(SettingsError, match=words):
            Reader({"SLOTLOCK_S": raw}).number("SLOTLOCK_S", 0.5, minimum=0, maximum=1)
    with pytest.raises(SettingsError, match="must be greater than 0, not '0'"):
        Reader({"SLOTLOCK_S": "0"}).number("SLOTLOCK_S", 1.0, positive=True)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("1", True), ("TRUE", True), ("yes", True), ("on", True)],
        *[("0", False), ("False", False), ("no", False), ("off", False)],
    ],
)
def test_flag(raw: str, value: bool) -> None:
    assert Reader({"SLOTLOCK_F": raw}).flag("SLOTLOCK_F", not value) is value


def test_flag_refuses_other_words() -> None:
    with pytest.raises(SettingsError, match=r"SLOTLOCK_F must be true or false .*, not 'maybe'"):
        Reader({"SLOTLOCK_F": "maybe"}).flag("SLOTLOCK_F", True)


def test_log_level() -> None:
    assert Reader({"SLOTLOCK_LOG_LEVEL": "debug"}).log_level("SLOTLOCK_LOG_LEVEL", "INFO") == (
        "DEBUG"
    )
    with pytest.raises(SettingsError) as error:
        Reader({"SLOTLOCK_LOG_LEVEL": "loud"}).log_level("SLOTLOCK_LOG_LEVEL", "INFO")
    assert str(error.value) == (
        "SLOTLOCK_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'loud'"
    )


@pytest.mark.parametrize(
    "read_settings",
    [ReservationSettings.from_env, AvailabilitySettings.from_env, GatewaySettings.from_env],
)
def test_every_service_refuses_a_loud_log_level(read_settings: object) -> None:
    assert callable(read_settings)
    with pytest.raises(SettingsError, match="SLOTLOCK_LOG_LEVEL must be one of"):
        read_settings({"SLOTLOCK_LOG_LEVEL": "loud"})


def test_url_schemes() -> None:
    read = Reader(
        {
            "SLOTLOCK_DATABASE_URL": "postgres://u@db:5432/x",
            "SLOTLOCK_NATS_URL": "tls://nats:4222",
        }
    )
    assert read.url("SLOTLOCK_DATABASE_URL", "", schemes=settings.POSTGRES_SCHEMES).endswith("/x")
    assert read.url("SLOTLOCK_NATS_URL", "", schemes=settings.NATS_SCHEMES) == "tls://nats:4222"
    for raw in ("localhost:4222", "http://nats:4222", "nats://"):
        with pytest.raises(SettingsError, match=r"SLOTLOCK_NATS_URL must be a nats:// or tls://"):
            Reader({"SLOTLOCK_NATS_URL": raw}).url(
                "SLOTLOCK_NATS_URL", "", schemes=settings.NATS_SCHEMES
            )
    with pytest.raises(SettingsError, match="must be a postgresql:// or postgres:// URL"):
        ReservationSettings.from_env({"SLOTLOCK_DATABASE_URL": "mysql://db/x"})


def test_address() -> None:
    assert Reader({"SLOTLOCK_A": "res:1"}).address("SLOTLOCK_A", "") == "res:1"
    for raw in ("res", ":50051", "res:http", "res:0", "res:70000"):
        with pytest.raises(SettingsError, match=f"SLOTLOCK_A must be HOST:PORT, not '{raw}'"):
            Reader({"SLOTLOCK_A": raw}).address("SLOTLOCK_A", "")


def test_stream_and_subject_prefix() -> None:
    read = Reader({"SLOTLOCK_STREAM": "S", "SLOTLOCK_SUBJECT_PREFIX": "a.b"})
    assert read.stream_name("SLOTLOCK_STREAM", "x") == "S"
    assert read.subject_prefix("SLOTLOCK_SUBJECT_PREFIX", "x") == "a.b"
    with pytest.raises(SettingsError, match="SLOTLOCK_STREAM must be a stream name"):
        Reader({"SLOTLOCK_STREAM": "a.b"}).stream_name("SLOTLOCK_STREAM", "x")
    for raw in ("a.*", ".a", "a.", "a >"):
        with pytest.raises(SettingsError, match="SLOTLOCK_SUBJECT_PREFIX must be a subject"):
            Reader({"SLOTLOCK_SUBJECT_PREFIX": raw}).subject_prefix("SLOTLOCK_SUBJECT_PREFIX", "x")


def test_the_reservation_service_and_the_gateway_read_one_seat_limit() -> None:
    env = {**SECURE_ENV, "SLOTLOCK_MAX_SEATS_PER_HOLD": "4"}
    assert ReservationSettings.from_env(env).max_seats_per_hold == 4
    assert GatewaySettings.from_env(env).max_seats_per_hold == 4
    assert GatewaySettings().max_seats_per_hold == ReservationSettings().max_seats_per_hold


def test_settings_stay_plain_frozen_dataclasses() -> None:
    base = GatewaySettings(port=0, reservation_addr="r:1")
    assert dataclasses.replace(base, port=9).port == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.port = 1  # type: ignore[misc]


def test_unknown_variables_name_the_closest_known_one() -> None:
    env = {
        "SLOTLOCK_HOLD_TTL": "30",
        "SLOTLOCK_NATS_ULR": "nats://x:1",
        "SLOTLOCK_ZZZ": "1",
        "SLOTLOCK_TEST_DATABASE_URL": "postgresql://db/x",
        "SLOTLOCK_GATEWAY_PORT": "1",
        "PATH": "/bin",
    }
    assert settings.unknown_variables(env) == [
        "SLOTLOCK_HOLD_TTL is not a slotlock setting and is ignored; "
        "did you mean SLOTLOCK_HOLD_TTL_S?",
        "SLOTLOCK_NATS_ULR is not a slotlock setting and is ignored; "
        "did you mean SLOTLOCK_NATS_URL?",
        "SLOTLOCK_ZZZ is not a slotlock setting and is ignored",
    ]


def test_every_variable_a_service_reads_is_known() -> None:
    """A variable of one service is no typo for the others (they may share one env file)."""
    seen: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            seen.add(key)
            return super().get(key, default)

    for read_settings in (
        ReservationSettings.from_env,
        AvailabilitySettings.from_env,
        GatewaySettings.from_env,
    ):
        read_settings(Recording(SECURE_ENV))
    assert seen and seen <= set(KNOWN_VARIABLES)
    assert settings.unknown_variables(dict.fromkeys(seen, "")) == []


def test_load_warns_then_reads_or_exits_2_with_one_line() -> None:
    out = io.StringIO()
    loaded = settings.load(
        "gateway", GatewaySettings.from_env, {"SLOTLOCK_GATEWAY_PROT": "1"}, stderr=out
    )
    assert loaded == GatewaySettings()
    assert out.getvalue() == (
        "gateway: warning: SLOTLOCK_GATEWAY_PROT is not a slotlock setting and is ignored; "
        "did you mean SLOTLOCK_GATEWAY_PORT?\n"
    )
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        settings.load(
            "slotlock-reservation",
            ReservationSettings.from_env,
            {"SLOTLOCK_LOG_LEVEL": "loud"},
            stderr=out,
        )
    assert exit_.value.code == 2
    assert out.getvalue().count("\n") == 1
    assert out.getvalue().startswith("slotlock-reservation: SLOTLOCK_LOG_LEVEL must be one of")


@pytest.mark.parametrize(
    ("from_env", "port_variable"),
    [
        (ReservationSettings.from_env, "SLOTLOCK_RESERVATION_PORT"),
        (AvailabilitySettings.from_env, "SLOTLOCK_AVAILABILITY_PORT"),
        (GatewaySettings.from_env, "SLOTLOCK_GATEWAY_PORT"),
    ],
)
def test_workers_of_every_process_share_one_fixed_port(from_env: Any, port_variable: str) -> None:
    """SLOTLOCK_WORKERS > 1 with port 0 would have each worker listen on a port of its own."""
    env = {**SECURE_ENV, "SLOTLOCK_WORKERS": "2"}
    assert from_env({**env, port_variable: "50100"}).workers == 2
    with pytest.raises(SettingsError, match=f"SLOTLOCK_WORKERS must be 1 when {port_variable}"):
        from_env({**env, port_variable: "0"})
