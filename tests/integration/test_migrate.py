"""`slotlock migrate` on an empty database, and replicas that may not migrate
(SLOTLOCK_MIGRATE_ON_START=false): they refuse an unmigrated database in one line and start on a
migrated one."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from reservation_service import sql
from reservation_service.migrations import SchemaNotCurrent
from reservation_service.server import ReservationServer
from reservation_service.settings import Settings
from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack
from slotlock_cli.main import main
from slotlock_cli.system import create_database, drop_database
from tests.support import TEST_HOLD_TOKEN_SECRET, TEST_SECURITY, StartReservation

MIGRATIONS = [f"{version:04d}_{name}" for version, name, _ in sql.migrations()]


@pytest.fixture
def empty_database(stack: DevStack) -> Iterator[str]:
    name = f"empty_{uuid.uuid4().hex[:12]}"
    yield create_database(stack.database_url, name)
    drop_database(stack.database_url, name)


def settings_for(database_url: str, stack: DevStack, feed: Feed, **fields: object) -> Settings:
    return Settings(
        database_url=database_url,
        nats_url=stack.nats_url,
        port=0,
        stream=feed.stream,
        subject_prefix=feed.subject_prefix,
        hold_token_secret="test-secret",
        security=TEST_SECURITY,
        **fields,  # type: ignore[arg-type]
    )


def test_migrate_creates_the_schema_then_applies_nothing(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--check", "--database-url", empty_database]) == 1
    assert [f"missing {m}" for m in MIGRATIONS] == capsys.readouterr().out.splitlines()[:-1]

    assert main(["migrate", "--database-url", empty_database]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"applied {m}" for m in MIGRATIONS] + [
        f"applied {len(MIGRATIONS)} migrations; the database is current"
    ]
    with psycopg.connect(empty_database) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {"events", "reservations", "outbox", "schema_migrations"} <= tables

    assert main(["migrate", "--database-url", empty_database]) == 0
    assert capsys.readouterr().out == "nothing to apply: the database is current\n"
    assert main(["migrate", "--check", "--database-url", empty_database]) == 0


def test_migrate_reads_the_database_from_the_environment(
    empty_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLOTLOCK_DATABASE_URL", empty_database)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.startswith(f"applied {MIGRATIONS[0]}\n")
    monkeypatch.setenv("SLOTLOCK_DATABASE_URL", "mysql://nope")
    assert main(["migrate"]) == 2
    assert "SLOTLOCK_DATABASE_URL must be a postgresql:// or postgres:// URL" in (
        capsys.readouterr().err
    )


def test_migrate_reports_an_unreachable_database_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    assert main(["migrate", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("slotlock migrate: cannot migrate: ")
    assert len(err.splitlines()) == 1


async def test_a_replica_that_may_not_migrate_refuses_an_unmigrated_database(
    empty_database: str, stack: DevStack, feed: Feed
) -> None:
    settings = settings_for(empty_database, stack, feed, migrate_on_start=False)
    with pytest.raises(SchemaNotCurrent, match="run `slotlock migrate`"):
        await ReservationServer(settings).start()
    with psycopg.connect(empty_database) as conn:  # it created nothing
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_the_refusal_is_one_line_and_exit_status_1(empty_database: str, stack: DevStack) -> None:
    env = {
        **os.environ,
        "SLOTLOCK_DATABASE_URL": empty_database,
        "SLOTLOCK_NATS_URL": stack.nats_url,
        "SLOTLOCK_RESERVATION_PORT": "0",
        "SLOTLOCK_MIGRATE_ON_START": "false",
        # Past the security settings' checks, which come first (a closed test network).
        "SLOTLOCK_INSECURE_NO_AUTH": "true",
        "SLOTLOCK_INSECURE_PLAINTEXT": "true",
        "SLOTLOCK_HOLD_TOKEN_SECRET": TEST_HOLD_TOKEN_SECRET,  # required since issue 9
    }
    result = subprocess.run(
        [sys.executable, "-m", "reservation_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert lines == [
        "slotlock-reservation: cannot start: the database lacks migrations "
        f"{', '.join(MIGRATIONS)}: run `slotlock migrate` (SLOTLOCK_MIGRATE_ON_START is false)"
    ]
    assert "Traceback" not in result.stderr


async def test_a_replica_that_may_not_migrate_starts_on_a_migrated_database(
    start_reservation: StartReservation,
) -> None:
    # The fixture's database is a clone of a template that `apply_migrations` built.
    server = await start_reservation(migrate_on_start=False)
    assert server.port > 0
