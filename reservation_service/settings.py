"""The reservation service's settings: one frozen object, read from the environment once in
``__main__`` and passed down. Nothing deeper reads ``os.environ``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from reservation_service.holds import HoldPolicy
from reservation_service.retention import Retention
from slotlock.feed import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, Feed
from slotlock.grpc_server import ServerSecurity
from slotlock.settings import (
    NATS_SCHEMES,
    POSTGRES_SCHEMES,
    Reader,
    SettingsError,
    Telemetry,
    check_workers_port,
    read_max_seats_per_hold,
    read_telemetry,
    read_workers,
)

# Hold tokens are HMACs under this secret: whoever knows it can pay for and release anyone's hold.
MIN_SECRET_BYTES = 32
# Values that have been published (examples, old defaults): never a secret.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me-to-a-long-random-value",
        "slotlock-insecure-dev-secret",
        "test-secret",
    }
)


@dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/slotlock"
    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 50051
    hold_ttl_s: float = 300.0
    max_seats_per_hold: int = 10
    # The life of a hold (README, "The life of a hold"); an event may override the ones marked *.
    max_seats_per_customer: int = 0  # * PENDING + PAID seats per customer per event; 0 = no limit
    hold_extension_s: float = 300.0  # ExtendHold's default step
    max_hold_extensions: int = 3
    max_hold_lifetime_s: float = 1800.0  # * from created_at, extensions included
    payment_grace_s: float = 600.0  # after expires_at, once the buyer has started paying
    late_payments_take_free_seats: bool = True  # False: every late payment is refunded
    keep_history_s: float = 400 * 86400.0  # history rows; 0 = keep forever
    # Signs new hold tokens; the previous ones are still accepted (rotation). No default: the
    # server refuses to start without one, and from_env refuses a short or published one.
    hold_token_secret: str = ""
    previous_hold_token_secrets: tuple[str, ...] = ()
    db_pool_size: int = 10
    # Outages (README, "Health, drain and outages"): how long a call may wait for Postgres before
    # it is answered UNAVAILABLE (never past the caller's deadline), how often health checks it,
    # and how a SIGTERM drains: NOT_SERVING for drain_delay_s, then calls in flight get grace_s.
    db_unavailable_after_s: float = 2.0
    health_probe_s: float = 1.0
    drain_delay_s: float = 0.0
    shutdown_grace_s: float = 10.0
    max_batch: int = 256
    expiry_recheck_s: float = 2.0
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    notify_other_replicas: bool = True
    run_relay: bool = True
    run_expirer: bool = True
    workers: int = 1
    log_level: str = "INFO"
    telemetry: Telemetry = field(default_factory=Telemetry)
    # Who may call and over what (tokens, TLS, reflection). The default authenticates nobody, so
    # a server refuses to start with it: tests and `slotlock dev` set one up.
    security: ServerSecurity = field(default_factory=ServerSecurity)
    # False: the service runs without DDL rights (`slotlock migrate` applies migrations) and
    # refuses to start on a database that lacks one.
    migrate_on_start: bool = True
    # Retention (README, "Retention"); 0 means "keep forever" for the last three.
    keep_published_outbox_s: float = 86400.0
    stream_max_age_s: float = 0.0
    keep_past_event_subjects_s: float = 7 * 86400.0
    keep_finished_reservations_s: float = 0.0

    @property
    def hold_ttl(self) -> timedelta:
        return timedelta(seconds=self.hold_ttl_s)

    @property
    def hold_policy(self) -> HoldPolicy:
        return HoldPolicy(
            ttl=self.hold_ttl,
            max_seats_per_hold=self.max_seats_per_hold,
            max_seats_per_customer=self.max_seats_per_customer,
            extension=timedelta(seconds=self.hold_extension_s),
            max_extensions=self.max_hold_extensions,
            max_hold_lifetime=timedelta(seconds=self.max_hold_lifetime_s),
            payment_grace=timedelta(seconds=self.payment_grace_s),
            late_payments_take_free_seats=self.late_payments_take_free_seats,
        )

    @property
    def feed(self) -> Feed:
        return Feed(
            stream=self.stream, subject_prefix=self.subject_prefix, max_age_s=self.stream_max_age_s
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            keep_published_outbox_s=self.keep_published_outbox_s,
            keep_past_event_subjects_s=self.keep_past_event_subjects_s,
            keep_finished_reservations_s=self.keep_finished_reservations_s,
            keep_history_s=self.keep_history_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Raises ``SettingsError`` with a one-line reason for a bad value."""
        d = cls()
        read = Reader(env)
        secrets = _split_secrets(read.raw("SLOTLOCK_HOLD_TOKEN_SECRET"))
        return cls(
            database_url=read.url(
                "SLOTLOCK_DATABASE_URL", d.database_url, schemes=POSTGRES_SCHEMES
            ),
            nats_url=read.url("SLOTLOCK_NATS_URL", d.nats_url, schemes=NATS_SCHEMES),
            host=read.text("SLOTLOCK_RESERVATION_HOST", d.host),
            port=read.port("SLOTLOCK_RESERVATION_PORT", d.port),
            hold_ttl_s=read.number("SLOTLOCK_HOLD_TTL_S", d.hold_ttl_s, minimum=0.1, maximum=86400),
            max_seats_per_hold=read_max_seats_per_hold(read),
            max_seats_per_customer=read.integer(
                "SLOTLOCK_MAX_SEATS_PER_CUSTOMER",
                d.max_seats_per_customer,
                minimum=0,
                maximum=1_000_000,
            ),
            hold_extension_s=read.number(
                "SLOTLOCK_HOLD_EXTENSION_S", d.hold_extension_s, minimum=1, maximum=86400
            ),
            max_hold_extensions=read.integer(
                "SLOTLOCK_MAX_HOLD_EXTENSIONS", d.max_hold_extensions, minimum=0, maximum=100
            ),
            max_hold_lifetime_s=read.number(
                "SLOTLOCK_MAX_HOLD_LIFETIME_S", d.max_hold_lifetime_s, minimum=1, maximum=7 * 86400
            ),
            payment_grace_s=read.number(
                "SLOTLOCK_PAYMENT_GRACE_S", d.payment_grace_s, minimum=0, maximum=86400
            ),
            late_payments_take_free_seats=read.flag(
                "SLOTLOCK_LATE_PAYMENTS_TAKE_FREE_SEATS", d.late_payments_take_free_seats
            ),
            keep_history_s=_keep_s(read, "SLOTLOCK_KEEP_HISTORY_S", d.keep_history_s),
            hold_token_secret=secrets[0] if secrets else "",
            previous_hold_token_secrets=tuple(secrets[1:]),
            db_pool_size=read.integer(
                "SLOTLOCK_DB_POOL_SIZE", d.db_pool_size, minimum=2, maximum=200
            ),
            db_unavailable_after_s=read.number(
                "SLOTLOCK_DB_UNAVAILABLE_AFTER_S", d.db_unavailable_after_s, minimum=0.1, maximum=60
            ),
            health_probe_s=read.number(
                "SLOTLOCK_HEALTH_PROBE_S", d.health_probe_s, minimum=0.1, maximum=60
            ),
            drain_delay_s=read.number(
                "SLOTLOCK_DRAIN_DELAY_S", d.drain_delay_s, minimum=0, maximum=300
            ),
            shutdown_grace_s=read.number(
                "SLOTLOCK_SHUTDOWN_GRACE_S", d.shutdown_grace_s, minimum=0, maximum=3600
            ),
            max_batch=read.integer("SLOTLOCK_MAX_BATCH", d.max_batch, minimum=1, maximum=10000),
            expiry_recheck_s=read.number(
                "SLOTLOCK_EXPIRY_RECHECK_S", d.expiry_recheck_s, minimum=0.05, maximum=60
            ),
            stream=read.stream_name("SLOTLOCK_STREAM", d.stream),
            subject_prefix=read.subject_prefix("SLOTLOCK_SUBJECT_PREFIX", d.subject_prefix),
            notify_other_replicas=read.flag(
                "SLOTLOCK_NOTIFY_OTHER_REPLICAS", d.notify_other_replicas
            ),
            run_relay=read.flag("SLOTLOCK_RUN_RELAY", d.run_relay),
            run_expirer=read.flag("SLOTLOCK_RUN_EXPIRER", d.run_expirer),
            workers=read_workers(read),
            log_level=read.log_level("SLOTLOCK_LOG_LEVEL", d.log_level),
            telemetry=read_telemetry(read, "SLOTLOCK_RESERVATION_METRICS_PORT"),
            security=ServerSecurity.read(read),
            migrate_on_start=read.flag("SLOTLOCK_MIGRATE_ON_START", d.migrate_on_start),
            keep_published_outbox_s=read.number(
                "SLOTLOCK_OUTBOX_KEEP_PUBLISHED_S", d.keep_published_outbox_s, minimum=60
            ),
            stream_max_age_s=_keep_s(read, "SLOTLOCK_STREAM_MAX_AGE_S", d.stream_max_age_s),
            keep_past_event_subjects_s=_keep_s(
                read, "SLOTLOCK_STREAM_KEEP_PAST_EVENTS_S", d.keep_past_event_subjects_s
            ),
            keep_finished_reservations_s=_keep_s(
                read, "SLOTLOCK_KEEP_FINISHED_RESERVATIONS_S", d.keep_finished_reservations_s
            ),
        ).checked()

    def checked(self) -> Settings:
        """Checks across fields, and the hold-token secret last (so a test of another variable
        sees that variable's error first)."""
        check_workers_port(self.workers, self.port, "SLOTLOCK_RESERVATION_PORT")
        check_hold_token_secrets((self.hold_token_secret, *self.previous_hold_token_secrets))
        return self


def _split_secrets(raw: str | None) -> list[str]:
    """``new,old``: the first signs, all are accepted (commas never occur in the hex or base64
    secrets `openssl rand` makes)."""
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def check_hold_token_secrets(secrets: tuple[str, ...]) -> None:
    """Fail closed, in one line that never shows the secret: no secret, a short one, or one that
    has been published anywhere (an outsider could compute every hold token with it)."""
    name = "SLOTLOCK_HOLD_TOKEN_SECRET"
    if not any(secrets):
        raise SettingsError(
            f"{name} is not set: hold tokens need a secret of at least {MIN_SECRET_BYTES} "
            "random bytes shared by every replica (e.g. `openssl rand -hex 32`)"
        )
    for position, secret in enumerate(secrets, start=1):
        which = "" if len(secrets) == 1 else f" (secret {position} of {len(secrets)})"
        if secret.lower() in PLACEHOLDER_SECRETS or "change-me" in secret.lower():
            raise SettingsError(
                f"{name} is a published placeholder{which}: set a random secret of at least "
                f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"{name} must be at least {MIN_SECRET_BYTES} bytes{which}, not "
                f"{len(secret.encode())} bytes (e.g. `openssl rand -hex 32`)"
            )


def _keep_s(read: Reader, name: str, default: float) -> float:
    """A retention period in seconds: 0 (keep forever), or at least an hour, so that a value
    meant as hours or days cannot delete what was written a moment ago."""
    value = read.number(name, default, minimum=0)
    if 0 < value < 3600:
        raise SettingsError(f"{name} must be 0 (keep forever) or at least 3600, not '{value:g}'")
    return value
