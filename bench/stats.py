"""Small statistics shared by the benchmarks."""

from __future__ import annotations


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
