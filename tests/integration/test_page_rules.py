"""The listing page's rules, run by node (a separate process, hence not a unit test): the page
keeps an update only when its version is strictly newer, as the Python side does, and caps the
seat picker with the limit the gateway serves instead of a hard-coded 10."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from availability_service.projection import (
    BadgePolicy,
    EventFacts,
    EventStatus,
    apply_change,
    view_of,
)

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_rules(script: str) -> object:
    assert NODE is not None
    program = f"const rules = require({json.dumps(str(STATIC / 'rules.js'))});\n{script}"
    result = subprocess.run(
        [NODE, "-e", program], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(result.stdout)


def test_the_page_keeps_only_strictly_newer_versions_like_the_projection() -> None:
    held = 5
    page = run_rules(
        "console.log(JSON.stringify([4, 5, 6].map("
        "v => rules.isNewer({version: 5}, {version: v}))"
        ".concat([rules.isNewer(undefined, {version: 1})])))"
    )
    policy = BadgePolicy()
    current = view_of(_facts(held), policy)
    python = [apply_change(current, _facts(v), policy) is not None for v in (4, 5, 6)]
    python.append(apply_change(None, _facts(1), policy) is not None)
    assert page == python == [False, False, True, True]


def test_the_seat_picker_is_capped_by_the_served_limit() -> None:
    limits = run_rules(
        "console.log(JSON.stringify(["
        "rules.seatLimit(20, 4), rules.seatLimit(3, 4), rules.seatLimit(0, 4),"
        "rules.seatLimit(20, null)]))"
    )
    assert limits == [4, 3, 1, 20]


def test_the_page_uses_the_rules_and_no_hard_coded_limit() -> None:
    app = (STATIC / "app.js").read_text()
    html = (STATIC / "index.html").read_text()
    assert "isNewer(known, ev)" in app and "known.version >" not in app
    assert "seatLimit(ev.available, maxSeatsPerHold)" in app
    assert "MAX_SEATS_PER_HOLD = 10" not in app and 'max="10"' not in html
    assert html.index("/static/rules.js") < html.index("/static/app.js")


def _facts(version: int) -> EventFacts:
    return EventFacts(
        event_id="e1",
        code="E-1",
        experience_title="Show",
        local_date="2030-01-01",
        local_start_time="19:00",
        time_zone="UTC",
        starts_at=None,
        capacity=10,
        paid=0,
        pending=0,
        status=EventStatus.SCHEDULED,
        experience_only_enabled=False,
        dinner_price=None,
        experience_only_price=None,
        version=version,
    )
