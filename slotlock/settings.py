"""The one reader of ``SLOTLOCK_*`` environment variables, shared by the three services.

Each service keeps its own frozen ``Settings`` dataclass (built directly by tests) and a
``from_env`` that reads every field through a ``Reader``: casts, bounds and defaults live here, so
a bad value reads the same everywhere: ``SLOTLOCK_X must be <what>, not '<value>'``, raised as
``SettingsError``. An empty value means "use the default", as an unset one does, because
environment files and compose files often leave a line with nothing after the ``=``.

Misspelled names: ``unknown_variables`` reports every ``SLOTLOCK_*`` name in the environment that
no slotlock program reads, with the closest known name. It is a warning, not an error: the three
services (and the gateway, the CLI and the test suite) may share one environment file, and a file
written for a newer release must not stop an older replica from starting during a rolling
upgrade. Each ``__main__`` prints the warnings on stderr before it starts.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO, TypeVar

PREFIX = "SLOTLOCK_"

# Every SLOTLOCK_* variable any slotlock program reads, and who reads it. A unit test checks that
# each service's from_env reads nothing missing here.
KNOWN_VARIABLES: Mapping[str, str] = {
    "SLOTLOCK_DATABASE_URL": "reservation, slotlock migrate",
    "SLOTLOCK_NATS_URL": "reservation, availability",
    "SLOTLOCK_STREAM": "reservation, availability",
    "SLOTLOCK_SUBJECT_PREFIX": "reservation, availability",
    "SLOTLOCK_LOG_LEVEL": "reservation, availability, gateway",
    "SLOTLOCK_RESERVATION_HOST": "reservation",
    "SLOTLOCK_RESERVATION_PORT": "reservation",
    "SLOTLOCK_HOLD_TTL_S": "reservation",
    "SLOTLOCK_MAX_SEATS_PER_HOLD": "reservation, gateway (the page's seat picker)",
    "SLOTLOCK_MAX_SEATS_PER_CUSTOMER": "reservation",
    "SLOTLOCK_HOLD_EXTENSION_S": "reservation",
    "SLOTLOCK_MAX_HOLD_EXTENSIONS": "reservation",
    "SLOTLOCK_MAX_HOLD_LIFETIME_S": "reservation",
    "SLOTLOCK_PAYMENT_GRACE_S": "reservation",
    "SLOTLOCK_LATE_PAYMENTS_TAKE_FREE_SEATS": "reservation",
    "SLOTLOCK_KEEP_HISTORY_S": "reservation",
    "SLOTLOCK_HOLD_TOKEN_SECRET": "reservation",
    "SLOTLOCK_DB_POOL_SIZE": "reservation",
    "SLOTLOCK_MAX_BATCH": "reservation",
    "SLOTLOCK_DB_UNAVAILABLE_AFTER_S": "reservation",
    "SLOTLOCK_HEALTH_PROBE_S": "reservation",
    "SLOTLOCK_DRAIN_DELAY_S": "reservation, availability",
    "SLOTLOCK_SHUTDOWN_GRACE_S": "reservation, availability",
    "SLOTLOCK_MAX_FEED_LAG_S": "availability",
    "SLOTLOCK_EXPIRY_RECHECK_S": "reservation",
    "SLOTLOCK_NOTIFY_OTHER_REPLICAS": "reservation",
    "SLOTLOCK_RUN_RELAY": "reservation",
    "SLOTLOCK_RUN_EXPIRER": "reservation",
    "SLOTLOCK_WORKERS": "reservation, availability, gateway",
    "SLOTLOCK_MIGRATE_ON_START": "reservation",
    "SLOTLOCK_OUTBOX_KEEP_PUBLISHED_S": "reservation",
    "SLOTLOCK_STREAM_MAX_AGE_S": "reservation (the relay sets it on the stream)",
    "SLOTLOCK_STREAM_KEEP_PAST_EVENTS_S": "reservation",
    "SLOTLOCK_KEEP_FINISHED_RESERVATIONS_S": "reservation",
    "SLOTLOCK_AVAILABILITY_HOST": "availability",
    "SLOTLOCK_AVAILABILITY_PORT": "availability",
    "SLOTLOCK_BADGE_FEW_LEFT": "availability",
    "SLOTLOCK_BADGE_SHARE": "availability",
    "SLOTLOCK_MAX_WATCHERS": "availability",
    "SLOTLOCK_GATEWAY_HOST": "gateway",
    "SLOTLOCK_GATEWAY_PORT": "gateway",
    "SLOTLOCK_GATEWAY_RPC_TIMEOUT_S": "gateway",
    "SLOTLOCK_GATEWAY_MAX_BODY_BYTES": "gateway",
    "SLOTLOCK_GATEWAY_ALLOWED_ORIGINS": "gateway (origins besides its own that may post)",
    "SLOTLOCK_GATEWAY_HOLDS_PER_MINUTE": "gateway (per client address; 0 = no limit)",
    "SLOTLOCK_GATEWAY_DEMO_PAYMENTS": "gateway (the simulated Pay; slotlock dev turns it on)",
    "SLOTLOCK_GATEWAY_SECURE_COOKIES": "gateway (false for plain-HTTP local runs)",
    "SLOTLOCK_RESERVATION_ADDR": "gateway, slotlock CLI",
    "SLOTLOCK_AVAILABILITY_ADDR": "gateway, slotlock CLI",
    "SLOTLOCK_RESERVATION_METRICS_PORT": "reservation (0 or unset: no metrics endpoint)",
    "SLOTLOCK_AVAILABILITY_METRICS_PORT": "availability (0 or unset: no metrics endpoint)",
    "SLOTLOCK_GATEWAY_METRICS_PORT": "gateway (0 or unset: no metrics endpoint)",
    "SLOTLOCK_LOG_FORMAT": "reservation, availability, gateway (json or console)",
    "SLOTLOCK_OTEL_EXPORTER": "reservation, availability (none, console or otlp)",
    # Security (slotlock.auth, slotlock.tls): servers, then clients.
    "SLOTLOCK_AUTH_JWT_SECRET": "reservation, availability",
    "SLOTLOCK_AUTH_JWT_PUBLIC_KEY_FILE": "reservation, availability",
    "SLOTLOCK_AUTH_AUDIENCE": "reservation, availability",
    "SLOTLOCK_INSECURE_NO_AUTH": "reservation, availability",
    "SLOTLOCK_TLS_CERT_FILE": "reservation, availability",
    "SLOTLOCK_TLS_KEY_FILE": "reservation, availability",
    "SLOTLOCK_TLS_CLIENT_CA_FILE": "reservation, availability",
    "SLOTLOCK_TLS_CLIENT_ROLES": "reservation, availability",
    "SLOTLOCK_INSECURE_PLAINTEXT": "reservation, availability",
    "SLOTLOCK_REFLECTION": "reservation, availability",
    "SLOTLOCK_TOKEN": "gateway, slotlock CLI",
    "SLOTLOCK_TLS_CA_FILE": "gateway, slotlock CLI",
    "SLOTLOCK_TLS_CLIENT_CERT_FILE": "gateway, slotlock CLI",
    "SLOTLOCK_TLS_CLIENT_KEY_FILE": "gateway, slotlock CLI",
    "SLOTLOCK_TEST_DATABASE_URL": "test suite (scripts/test)",
    "SLOTLOCK_TEST_NATS_URL": "test suite (scripts/test)",
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POSTGRES_SCHEMES = ("postgresql", "postgres")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """An environment variable holds a value slotlock cannot use; the message is one line that
    names the variable, says what it must be and shows what it was."""


def _fail(name: str, must_be: str, raw: str) -> SettingsError:
    return SettingsError(f"{name} must be {must_be}, not {raw!r}")


class Reader:
    """Typed reads of one environment mapping. Every method takes the variable's name and its
    default (returned when the variable is unset or empty) and raises ``SettingsError``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.names_read: set[str] = set()

    def raw(self, name: str) -> str | None:
        """The stripped value, or None when unset or empty."""
        self.names_read.add(name)
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """A whole number: ``50051.9`` is refused, never truncated."""
        raw = self.raw(name)
        if raw is None:
            return default
        if not _INTEGER.fullmatch(raw):
            raise _fail(name, "an integer", raw)
        value = int(raw)
        _check_range(name, raw, value, minimum, maximum)
        return value

    def port(self, name: str, default: int) -> int:
        """A TCP port; 0 asks the system for a free one."""
        return self.integer(name, default, minimum=0, maximum=65535)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite number (``nan`` and ``inf`` are refused); ``positive`` excludes 0."""
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise _fail(name, "a number", raw) from None
        if not math.isfinite(value):
            raise _fail(name, "a finite number", raw)
        if positive and value <= 0:
            raise _fail(name, "greater than 0", raw)
        _check_range(name, raw, value, minimum, maximum)
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise _fail(name, "true or false (or 1/0, yes/no, on/off)", raw)

    def log_level(self, name: str, default: str) -> str:
        """A ``logging`` level name, upper-cased (``debug`` is fine, ``loud`` is not)."""
        raw = self.raw(name) or default
        if raw.upper() not in LOG_LEVELS:
            raise _fail(name, "one of " + ", ".join(LOG_LEVELS), raw)
        return raw.upper()

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        """One of ``choices`` (compared in lower case)."""
        raw = self.raw(name)
        allowed = tuple(choices)
        if raw is None:
            return default
        if raw.lower() not in allowed:
            raise _fail(name, "one of " + ", ".join(allowed), raw)
        return raw.lower()

    def url(self, name: str, default: str, *, schemes: Iterable[str]) -> str:
        """A URL whose scheme is one of ``schemes`` and which names a host."""
        raw = self.raw(name)
        if raw is None:
            return default
        allowed = tuple(schemes)
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in allowed or not rest.strip("/"):
            listed = " or ".join(f"{s}://" for s in allowed)
            raise _fail(name, f"a {listed} URL", raw)
        return raw

    def address(self, name: str, default: str) -> str:
        """``HOST:PORT`` of a gRPC service."""
        raw = self.raw(name)
        if raw is None:
            return default
        host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(name, "HOST:PORT", raw)
        return raw

    def stream_name(self, name: str, default: str) -> str:
        """A JetStream stream name (no spaces, dots or wildcards)."""
        value = self.text(name, default)
        if any(c in value for c in " .*>"):
            raise _fail(name, "a stream name without spaces, '.', '*' or '>'", value)
        return value

    def subject_prefix(self, name: str, default: str) -> str:
        """A NATS subject prefix such as ``slotlock.event`` (no wildcards, no edge dots)."""
        value = self.text(name, default)
        if any(c in value for c in " *>") or value.startswith(".") or value.endswith("."):
            raise _fail(
                name, "a subject prefix like 'slotlock.event' (no spaces or wildcards)", value
            )
        return value


def read_max_seats_per_hold(read: Reader) -> int:
    """Read by the reservation service, which enforces it, and by the gateway, which tells the
    page (its seat picker stops there): one definition so the two cannot disagree."""
    return read.integer("SLOTLOCK_MAX_SEATS_PER_HOLD", 10, minimum=1, maximum=10000)


def read_workers(read: Reader) -> int:
    """SLOTLOCK_WORKERS: processes of one replica sharing its port (``slotlock.workers``); the
    same variable for every service, checked against the port by :func:`check_workers_port`."""
    return read.integer("SLOTLOCK_WORKERS", 1, minimum=1, maximum=64)


def check_workers_port(workers: int, port: int, port_variable: str) -> None:
    """Workers share one fixed port: with port 0 each would listen somewhere else."""
    if workers > 1 and port == 0:
        raise SettingsError(
            f"SLOTLOCK_WORKERS must be 1 when {port_variable} is 0, "
            f"not {str(workers)!r} (the workers share one fixed port)"
        )


@dataclass(frozen=True)
class Telemetry:
    """What every service reads about metrics, logs and traces (README, "Operations")."""

    metrics_port: int = 0  # 0: no metrics endpoint
    log_format: str = "json"
    otel_exporter: str = "none"


def read_telemetry(read: Reader, metrics_port_variable: str) -> Telemetry:
    """Read by each service with its own ``SLOTLOCK_<SERVICE>_METRICS_PORT``; the log format
    and the trace exporter are shared names (one environment file serves them all)."""
    d = Telemetry()
    return Telemetry(
        metrics_port=read.port(metrics_port_variable, d.metrics_port),
        log_format=read.choice("SLOTLOCK_LOG_FORMAT", d.log_format, ("json", "console")),
        otel_exporter=read.choice(
            "SLOTLOCK_OTEL_EXPORTER", d.otel_exporter, ("none", "console", "otlp")
        ),
    )


def _check_range(
    name: str, raw: str, value: float, minimum: float | None, maximum: float | None
) -> None:
    if minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise _fail(name, f"between {minimum:g} and {maximum:g}", raw)
    elif minimum is not None and value < minimum:
        raise _fail(name, f"at least {minimum:g}", raw)
    elif maximum is not None and value > maximum:
        raise _fail(name, f"at most {maximum:g}", raw)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning line per ``SLOTLOCK_*`` name in ``env`` that no slotlock program reads,
    naming the closest known name when there is one (a typo, most likely)."""
    warnings = []
    for name in sorted(env):
        if not name.startswith(PREFIX) or name in KNOWN_VARIABLES:
            continue
        # Compare what follows the prefix: the shared prefix would make every name look close.
        suffixes = [known.removeprefix(PREFIX) for known in KNOWN_VARIABLES]
        close = difflib.get_close_matches(name.removeprefix(PREFIX), suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        warnings.append(f"{name} is not a slotlock setting and is ignored{hint}")
    return warnings


SettingsT = TypeVar("SettingsT")


def load(
    prog: str,
    read: Callable[[Mapping[str, str]], SettingsT],
    env: Mapping[str, str],
    *,
    stderr: TextIO | None = None,
) -> SettingsT:
    """What every ``__main__`` does with its environment: warn about unknown ``SLOTLOCK_*``
    names, then read the settings once; a bad value prints ``prog: <reason>`` as one line and
    exits with status 2 (no traceback: the operator needs the variable, not our stack)."""
    out = stderr or sys.stderr
    for warning in unknown_variables(env):
        print(f"{prog}: warning: {warning}", file=out)
    try:
        return read(env)
    except SettingsError as error:
        print(f"{prog}: {error}", file=out)
        raise SystemExit(2) from None
