"""The proto check in scripts/test (scripts/check_protos.py: buf lint and buf breaking against the
last release's image) passes additions and fails changes that would break clients."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_protos.py"
CATALOG = Path("slotlock") / "v1" / "catalog.proto"

pytestmark = pytest.mark.skipif(
    not (ROOT / ".tools" / "buf").exists() and shutil.which("npm") is None,
    reason="buf is not installed and npm is absent to install it",
)


def check_copy(
    tmp_path: Path, edit: tuple[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the check on a copy of protos/, with one regular-expression edit of catalog.proto."""
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("baseline"))
    if edit is not None:
        path = copy / CATALOG
        text, count = re.subn(edit[0], edit[1], path.read_text(), count=1, flags=re.MULTILINE)
        assert count == 1, f"the edit {edit[0]!r} matched nothing"
        path.write_text(text)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--protos", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_current_protos_pass(tmp_path: Path) -> None:
    result = check_copy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_renumbered_field_fails_the_check(tmp_path: Path) -> None:
    result = check_copy(tmp_path, (r"^(\s*string code =) 2;", r"\1 102;"))
    assert result.returncode == 1
    assert 'field "2" with name "code" on message "Event" was deleted' in result.stdout
    assert "break the contract of slotlock-v0.1.json" in result.stdout


def test_a_removed_field_fails_the_check(tmp_path: Path) -> None:
    result = check_copy(tmp_path, (r"^\s*string experience_title = 3;.*\n", ""))
    assert result.returncode == 1
    assert '"experience_title" on message "Event" was deleted' in result.stdout


def test_an_added_field_passes(tmp_path: Path) -> None:
    result = check_copy(tmp_path, (r"^(message Money \{)$", r"\1\n  string note = 99;"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lint_violation_fails_the_check(tmp_path: Path) -> None:
    # A new enum (an addition, so not breaking) whose value lacks the enum's name as a prefix.
    result = check_copy(
        tmp_path, (r"^enum EventStatus \{$", "enum Colour {\n  RED = 0;\n}\n\n\\g<0>")
    )
    assert result.returncode == 1
    assert 'Enum value name "RED" should be prefixed with "COLOUR_"' in result.stdout
    assert "break the contract" not in result.stdout
