"""`slotlock bench ...`: benchmarks that print figures, the last line JSON. Never assertions."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# One module per benchmark, each with ``register(subparsers)``.
BENCH_MODULES: tuple[str, ...] = (
    "slotlock_cli.bench.holds",
    "slotlock_cli.bench.expiry",
    "slotlock_cli.bench.fanout",
    "slotlock_cli.bench.rebuild",
    "slotlock_cli.bench.sse",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="run a benchmark and print its figures (last line JSON)"
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(benches)
