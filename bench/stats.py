"""Small statistics, and the command-line tail, shared by the benchmarks."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio


def quantile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted sample."""
    if not sorted_ms:
        return float("nan")
    index = min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[index]


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {"n": len(ordered), "median": quantile(ordered, 0.5), "p95": quantile(ordered, 0.95),
            "p99": quantile(ordered, 0.99), "min": ordered[0], "max": ordered[-1],
            "mean": sum(ordered) / len(ordered)}


def run_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
             markdown: Callable[[dict[str, Any]], str], *, budget: float) -> None:
    """Add `--budget` and `--json`, run the benchmark, print its markdown tables, write the JSON report."""
    parser.add_argument("--budget", type=float, default=budget, help=f"abort after this many seconds (default {budget:g})")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    report = anyio.run(run, args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
