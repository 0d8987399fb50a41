"""Regenerate the slotlock.v1 Python stubs (with .pyi type stubs) from protos/.

The one way to produce generated code: `python scripts/gen_protos.py`. Never edit slotlock/v1;
CI regenerates and fails on any difference (`python scripts/gen_protos.py --check`).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "slotlock" / "v1"
INIT = (
    '"""Generated stubs for the slotlock.v1 contract. Do not edit: see scripts/gen_protos.py."""\n'
)


def generate(into: Path) -> None:
    import grpc_tools

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bindir = Path(sys.executable).parent
    include = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out=quiet:{into}",
        f"--mypy_grpc_out=quiet:{into}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    (into / "slotlock" / "v1" / "__init__.py").write_text(INIT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if slotlock/v1 is not current")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "slotlock" / "v1"
        if args.check:
            names = sorted(p.name for p in fresh.iterdir() if p.is_file())
            current = sorted(p.name for p in OUT.glob("*") if p.is_file()) if OUT.exists() else []
            _, mismatch, errors = filecmp.cmpfiles(fresh, OUT, names, shallow=False)
            if names != current or mismatch or errors:
                print(
                    "slotlock/v1 is stale: run `python scripts/gen_protos.py` and commit it",
                    f"(differs: {sorted(set(mismatch + errors) | set(names) ^ set(current))})",
                )
                return 1
            print(f"slotlock/v1 is current ({len(names)} files)")
            return 0
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(fresh, OUT)
        print(f"generated {len(list(OUT.iterdir()))} files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
