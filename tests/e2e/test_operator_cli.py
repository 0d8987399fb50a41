"""`slotlock` operator commands against the real services run as processes: list events, hold
seats by event code, see them in `watch`, confirm and release, and readable refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from slotlock.feed import Feed
from slotlock_cli.devstack import DevStack
from slotlock_cli.system import System

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def system(stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    feed = Feed(stream="T_CLI", subject_prefix="tcli.event")
    with System(stack, feed, log_dir=tmp_path_factory.mktemp("cli-logs")) as running:
        running.seed_event("CLI-SHOW", capacity=6, title="Operator Test Show")
        yield running


def slotlock(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slotlock_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **system.client_env(), "NO_COLOR": "1"},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def watch_once_row(
    system: System, code: str, until: Callable[[list[str]], bool], within_s: float = 5.0
) -> list[str]:
    """The event's row of `slotlock watch --once`, split into cells: EVENT, DATE, TIME, PAID,
    BEING PROCESSED, AVAILABLE, BADGE. Polled: the availability side follows within moments."""
    deadline = time.monotonic() + within_s
    while True:
        table = ok(slotlock(system, "watch", "--once"))
        assert table.splitlines()[0].split() == [
            "EVENT",
            "WHEN",
            "PAID",
            "BEING",
            "PROCESSED",
            "AVAILABLE",
            "BADGE",
        ]
        (row,) = [line.split() for line in table.splitlines() if line.startswith(code + " ")]
        if until(row) or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


def test_events_lists_the_catalog(system: System) -> None:
    out = ok(slotlock(system, "events"))
    assert out.splitlines()[0].split()[:3] == ["CODE", "DATE", "TIME"]
    assert "CLI-SHOW" in out and "Operator Test Show" in out
    (row,) = [json.loads(line) for line in ok(slotlock(system, "events", "--json")).splitlines()]
    assert (row["code"], row["capacity"]) == ("CLI-SHOW", 6)


def test_hold_by_code_shows_in_watch_then_confirm(system: System) -> None:
    out = ok(slotlock(system, "hold", "CLI-SHOW", "--quantity", "2"))
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["status"] == "PENDING" and fields["quantity"] == "2"
    assert fields["expires_at"].endswith("s)")

    row = watch_once_row(system, "CLI-SHOW", lambda row: row[4] == "2")
    assert row[3:6] == ["0", "2", "4"]  # paid, being processed, available
    assert row[6] in {"AVAILABLE", "FEW_LEFT", "ALMOST_FULL"}

    confirmed = ok(
        slotlock(system, "confirm", fields["reservation"], "--token", fields["hold_token"])
    )
    assert f"reservation {fields['reservation']} is PAID (2 seats, payment reference CLI-" in (
        confirmed
    )

    again = slotlock(system, "confirm", fields["reservation"], "--token", "0" * 64)
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1
    assert again.stderr.startswith("slotlock confirm: ")


def test_release_and_refusals_are_readable(system: System) -> None:
    hold = json.loads(ok(slotlock(system, "hold", "CLI-SHOW", "-n", "1", "--json")))
    released = json.loads(
        ok(
            slotlock(
                system, "release", hold["reservation_id"], "--token", hold["hold_token"], "--json"
            )
        )
    )
    assert released["status"] == "CANCELLED"

    too_many = slotlock(system, "hold", "CLI-SHOW", "--quantity", "9")
    assert too_many.returncode == 1
    assert too_many.stderr.startswith("slotlock hold: ")
    assert "(invalid argument)" in too_many.stderr or "not enough seats" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1

    unknown = slotlock(system, "hold", "NO-SUCH-SHOW", "--quantity", "1")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "slotlock hold: no event has the id or code 'NO-SUCH-SHOW' (see `slotlock events`)"
    )


def test_live_watch_prints_each_change(system: System, tmp_path: Path) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "slotlock_cli.main", "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **system.client_env(), "NO_COLOR": "1"},
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith("EVENT")  # the snapshot table first
        hold = json.loads(ok(slotlock(system, "hold", "CLI-SHOW", "-n", "1", "--json")))
        line = _next_line_about(watcher.stdout, "CLI-SHOW")
        assert "paid=" in line and "badge=" in line
        ok(slotlock(system, "release", hold["reservation_id"], "--token", hold["hold_token"]))
        assert "being_processed=0" in _next_line_about(watcher.stdout, "CLI-SHOW")

        # The availability service restarts: the same `watch` carries on by itself.
        system.stop_service("availability")
        system.start_service("availability")
        ok(slotlock(system, "hold", "CLI-SHOW", "-n", "3"))
        assert "being_processed=3" in _next_line_about(watcher.stdout, "CLI-SHOW", within_s=15)
    finally:
        watcher.terminate()
        watcher.wait(10)
    assert "Traceback" not in (watcher.stderr.read() if watcher.stderr else "")


def _next_line_about(stream: IO[str], code: str, within_s: float = 10.0) -> str:
    """The next change line `slotlock watch` prints for the event ``code``. A blocking read is
    fine: the test's timeout ends a watch that never prints."""
    deadline = time.monotonic() + within_s
    while True:
        line = stream.readline()
        if f" {code} " in line and "being_processed=" in line:
            return line
        assert line and time.monotonic() < deadline, f"no change line about {code}"
