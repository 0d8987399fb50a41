"""Lint the slotlock.v1 contract and check it against the last release (buf, offline).

`python scripts/check_protos.py` (scripts/test runs it) does three things:

1. installs buf, pinned, into ``.tools/buf`` (gitignored) from the npm package ``@bufbuild/buf``
   when that folder does not hold this version yet; afterwards it needs no network;
2. ``buf lint`` with the rules in ``buf.yaml``;
3. ``buf breaking`` against the newest baseline image in ``protos/baseline/``: a descriptor set of
   the protos as they were at that release. Additions (fields, messages, RPCs, options) pass;
   removing, renumbering, renaming or retyping anything fails with one line per change.

Cutting a new baseline at a release (after tagging it, or from the release commit):

    python scripts/check_protos.py --cut-baseline 0.2 --ref v0.2

builds ``protos/baseline/slotlock-v0.2.json`` from the protos committed at ``--ref`` (not from
the working tree), and from then on every check runs against it. Commit the file; older baselines
may be deleted (only the newest is used).

``--protos DIR`` checks another copy of the protos folder instead of ``protos/`` (the tests use it
to prove that a breaking edit fails the check).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF_VERSION = "1.75.0"
TOOLS = ROOT / ".tools" / "buf"
BUF = TOOLS / "node_modules" / ".bin" / "buf"
CONFIG = ROOT / "buf.yaml"
PROTOS = ROOT / "protos"
BASELINES = PROTOS / "baseline"
_BASELINE_NAME = re.compile(r"slotlock-v(\d+(?:\.\d+)*)\.json")


def ensure_buf() -> Path:
    """The pinned buf binary, installed from npm on first use."""
    stamp = TOOLS / "version"
    if BUF.exists() and stamp.exists() and stamp.read_text().strip() == BUF_VERSION:
        return BUF
    if TOOLS.exists():
        shutil.rmtree(TOOLS)
    TOOLS.mkdir(parents=True)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("check_protos: npm is needed once to install buf (Node.js 18 or later)")
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(TOOLS),
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            f"@bufbuild/buf@{BUF_VERSION}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(BUF_VERSION + "\n")
    return BUF


def newest_baseline(folder: Path = BASELINES) -> Path:
    found = []
    for path in folder.glob("slotlock-v*.json"):
        match = _BASELINE_NAME.fullmatch(path.name)
        if match:
            found.append((tuple(int(part) for part in match[1].split(".")), path))
    if not found:
        raise SystemExit(f"check_protos: no baseline image in {folder}")
    return max(found)[1]


def _workspace(protos: Path, into: Path) -> Path:
    """A buf workspace (buf.yaml + protos/) for a protos folder that is not ours."""
    shutil.copy(CONFIG, into / "buf.yaml")
    shutil.copytree(protos, into / "protos", ignore=shutil.ignore_patterns("baseline"))
    return into


def check(protos: Path = PROTOS, baseline: Path | None = None) -> int:
    """Lint, then the breaking-change check; 0 when both pass."""
    buf = ensure_buf()
    against = baseline or newest_baseline()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = ROOT if protos.resolve() == PROTOS else _workspace(protos, Path(tmp))
        lint = subprocess.run([str(buf), "lint"], cwd=workdir)
        breaking = subprocess.run(
            [str(buf), "breaking", "--against", str(against.resolve())], cwd=workdir
        )
    if lint.returncode == 0 and breaking.returncode == 0:
        print(f"protos pass buf lint and are compatible with {against.name}")
        return 0
    if breaking.returncode != 0:
        print(
            f"protos break the contract of {against.name}: add instead of changing (new field "
            "numbers, new messages); reserve what you remove only at a major version"
        )
    return 1


def cut_baseline(version: str, ref: str) -> Path:
    """Build protos/baseline/slotlock-v<version>.json from the protos committed at ``ref``."""
    if not re.fullmatch(r"\d+(?:\.\d+)*", version):
        raise SystemExit(f"check_protos: a version like 0.2, not {version!r}")
    buf = ensure_buf()
    target = BASELINES / f"slotlock-v{version}.json"
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "protos"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        shutil.copy(CONFIG, Path(tmp) / "buf.yaml")  # lint rules do not change the image
        raw = Path(tmp) / "image.json"
        # Imports included (the check must resolve descriptor.proto offline); no source info:
        # the messages point at the current files, never at the baseline's lines.
        subprocess.run(
            [str(buf), "build", "--exclude-source-info", "-o", str(raw)], cwd=tmp, check=True
        )
        image = json.loads(raw.read_text())
    BASELINES.mkdir(exist_ok=True)
    # Indented and sorted, so that the next baseline's diff can be reviewed.
    target.write_text(json.dumps(image, indent=1, sort_keys=True) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protos", type=Path, default=PROTOS, help="the protos folder to check")
    parser.add_argument("--against", type=Path, help="a baseline image (default: the newest)")
    parser.add_argument("--cut-baseline", metavar="VERSION", help="write a new baseline image")
    parser.add_argument("--ref", default="HEAD", help="the commit to cut the baseline from")
    args = parser.parse_args()
    if args.cut_baseline:
        path = cut_baseline(args.cut_baseline, args.ref)
        print(f"wrote {path.relative_to(ROOT)} from the protos at {args.ref}")
        return 0
    return check(args.protos, args.against)


if __name__ == "__main__":
    sys.exit(main())
