"""`slotlock dev` keeps its secrets to its user (issue 9, items 4 and 5): its folder is 0700 (0710
to the postgres system user's group when run as root), every secret 0600, Postgres and NATS ask
for the passwords it generated, and a temporary folder is gone after Ctrl-C; the reservation
service run outside it refuses to start without a real hold-token secret."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import psycopg

from slotlock_cli.devstack import free_port
from tests.support import SECURE_ENV, running_slotlock_dev

PYTHON = sys.executable


def private(path: Path) -> bool:
    """Nobody but the owner may read or list it (a group may at most pass through)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o067 == 0


def test_reservation_service_refuses_to_start_without_a_real_hold_token_secret() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLOCK_")}
    for secret, words in (
        (None, "SLOTLOCK_HOLD_TOKEN_SECRET is not set"),
        ("too-short", "at least 32 bytes"),
        ("change-me-to-a-long-random-value", "published placeholder"),
    ):
        env = {**base, **SECURE_ENV}
        env.pop("SLOTLOCK_HOLD_TOKEN_SECRET")
        if secret is not None:
            env["SLOTLOCK_HOLD_TOKEN_SECRET"] = secret
        done = subprocess.run(
            [PYTHON, "-m", "reservation_service"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], done.stderr


def test_slotlock_dev_keeps_secrets_private_uses_passwords_and_cleans_up(tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLOCK_")}
    env["TMPDIR"] = str(tmp_path)  # where its temporary folder goes
    out_path = tmp_path / "dev.out"
    with running_slotlock_dev(out_path, env, ports, "--no-seed") as (dev, printed):
        (root,) = tmp_path.glob("slotlock-dev-*")
        assert private(root)
        secret_files = [
            root / "hold-token-secret",
            *(root / "secrets").iterdir(),
            *(root / "security").glob("*.token"),
        ]
        assert len(secret_files) >= 6
        for path in secret_files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert private(root / "secrets")
        # Postgres wants the password it was given; the printed URL carries it.
        (database_url,) = re.findall(r"postgresql://\S+", printed)
        password = (root / "secrets" / "postgres.password").read_text().strip()
        assert f"postgres:{password}@" in database_url
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        anonymous = database_url.replace(f":{password}@", "@")
        try:
            psycopg.connect(anonymous, connect_timeout=5).close()
            raise AssertionError("Postgres let a client in without a password")
        except psycopg.OperationalError:
            pass
        # NATS: the services run as their own users (the log of each shows no refusal).
        logs = {p.name: p.read_text() for p in (root / "logs").glob("*.log")}
        assert "Authorization Violation" not in "".join(logs.values())
    assert dev.returncode == 0, out_path.read_text()
    assert not list(tmp_path.glob("slotlock-dev-*")), "the temporary folder should be removed"
