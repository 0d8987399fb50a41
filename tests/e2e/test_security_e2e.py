"""Security as a user meets it: services that refuse to start open, and `slotlock dev` coming up
with TLS and tokens and printing commands that work as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slotlock_cli.devstack import free_port
from tests.support import running_slotlock_dev

PYTHON = sys.executable


@pytest.mark.parametrize("module", ["reservation_service", "availability_service"])
def test_a_service_without_auth_settings_refuses_to_start_in_one_line(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLOCK_")}
    done = subprocess.run(
        [PYTHON, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no way to authenticate callers" in lines[0]
    # With a key but without TLS it still refuses: plain text must be asked for by name.
    env["SLOTLOCK_AUTH_JWT_SECRET"] = "x" * 32
    done = subprocess.run(
        [PYTHON, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "no TLS certificate" in done.stderr


def test_slotlock_dev_runs_secured_and_prints_commands_that_work(tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOTLOCK_")}
    out_path, data_dir = tmp_path / "dev.out", str(tmp_path / "data")
    with running_slotlock_dev(out_path, env, ports, "--data-dir", data_dir) as (_, printed):
        assert "gRPC over TLS" in printed
        exports = dict(re.findall(r"(SLOTLOCK_[A-Z_]+)=(\S+)", printed))
        assert {"SLOTLOCK_TOKEN", "SLOTLOCK_TLS_CA_FILE", "SLOTLOCK_RESERVATION_ADDR"} <= set(
            exports
        )
        assert "grpcurl -cacert" in printed
        (key_dir,) = {Path(exports["SLOTLOCK_TLS_CA_FILE"]).parent}
        assert (key_dir / "admin.token").stat().st_mode & 0o077 == 0

        def slotlock(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [PYTHON, "-m", "slotlock_cli.main", *args],
                env={**env, **exports, "NO_COLOR": "1", **extra},
                capture_output=True,
                text=True,
                timeout=60,
            )

        listed = slotlock("events")
        assert listed.returncode == 0, listed.stderr
        assert "Saigon Dinner Show" in listed.stdout
        no_token = slotlock("events", SLOTLOCK_TOKEN="")
        assert no_token.returncode == 1 and "unauthenticated" in no_token.stderr
        plain = slotlock("events", SLOTLOCK_TLS_CA_FILE="")
        assert plain.returncode == 1 and "not reachable" in plain.stderr
        reader = (key_dir / "reader.token").read_text().strip()
        code = listed.stdout.splitlines()[1].split()[0]
        refused = slotlock("hold", code, "-n", "1", SLOTLOCK_TOKEN=reader)
        assert refused.returncode == 1 and "permission denied" in refused.stderr
