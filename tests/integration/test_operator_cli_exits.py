"""`slotlock` operator commands as a person runs them (a real subprocess, so not a unit test): bad
arguments and an unreachable service give one readable line on stderr and a non-zero exit, never a
traceback. Needs no Postgres or NATS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slotlock_cli.devstack import free_port

pytestmark = pytest.mark.timeout(60)


def slotlock(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slotlock_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hold"], "the following arguments are required: EVENT_ID_OR_CODE, --quantity"),
        (["hold", "DS-1", "--quantity", "0"], "--quantity/-n: must be at least 1, got 0"),
        (["hold", "DS-1", "--quantity", "two"], "expected a whole number, got 'two'"),
        (["hold", "DS-1", "-n", "1", "--ticket-type", "vip"], "invalid choice: 'vip'"),
        (["confirm", "r-1"], "the following arguments are required: --token"),
        (["release"], "the following arguments are required: RES_ID, --token"),
        (["watch", "--reservation-addr", "nowhere"], "expected HOST:PORT, got 'nowhere'"),
        (["events", "--timeout", "-1"], "--timeout: must be positive"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = slotlock(*args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"slotlock {args[0]}: ")
    assert expected in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (["events"], "reservation"),
        (["hold", "DS-1", "--quantity", "2"], "reservation"),
        (["confirm", "r-1", "--token", "t"], "reservation"),
        (["release", "r-1", "--token", "t"], "reservation"),
        (["watch", "--once"], "availability"),
    ],
)
def test_unreachable_service_gives_one_line_and_exit_1(args: list[str], service: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = slotlock(
        *args, "--reservation-addr", nowhere, "--availability-addr", nowhere, "--timeout", "3"
    )
    assert result.returncode == 1
    line = one_line(result.stderr)
    expected = f"the {service} service at {nowhere} is not reachable (is it running?)"
    assert line == f"slotlock {args[0]}: {expected}"


@pytest.mark.parametrize("command", ["watch", "events", "hold", "confirm", "release"])
def test_help_explains_each_command(command: str) -> None:
    result = slotlock(command, "--help")
    assert result.returncode == 0
    assert f"usage: slotlock {command}" in result.stdout
    assert "--reservation-addr" in result.stdout
    assert "Exit status" in result.stdout
