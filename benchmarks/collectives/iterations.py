"""Per-iteration statistics of a collective, by nccl-tests' rules (``-I 1``, ``-K k``).

Every timed iteration of every rank is kept in the results (``per_rank_iter_us``). From
them, as nccl-tests v2.19 derives its ``*_per_iter`` blocks (src/common.cu, src/util.cu):
``times_us[i]`` is the slowest rank's time of iteration ``i`` (the max over ranks); the
summary skips the first ``skip`` iterations (``-K``) and gives min, max, mean, p50 (the
upper middle value), p95 and p99 (nearest rank), the population standard deviation and
the coefficient of variation in percent (0 when the mean is not positive).

Use: ``iteration_stats(slowest_per_iteration(rows), skip)``.
"""

from __future__ import annotations

import math
from typing import Any

STAT_KEYS = ("min_us", "max_us", "avg_us", "p50_us", "p95_us", "p99_us", "stdev_us", "cv_pct")


def slowest_per_iteration(rows: list[list[float]]) -> list[float]:
    """Iteration by iteration, the slowest rank's time (nccl-tests' ``times_us``)."""
    return [max(column) for column in zip(*rows, strict=True)]


def _nearest_rank(ordered: list[float], pct: int) -> float:
    n = len(ordered)
    return ordered[min(n - 1, math.ceil(pct * n / 100) - 1)]


def iteration_stats(times_us: list[float], skip: int = 0) -> dict[str, Any]:
    """The summary of ``times_us[skip:]`` (nccl-tests' ``-K``), with ``skipped_iterations``."""
    kept = list(times_us[skip:])
    if not kept:
        raise ValueError(f"skip={skip} leaves none of {len(times_us)} iterations")
    ordered = sorted(kept)
    n = len(kept)
    avg = sum(kept) / n
    stdev = math.sqrt(sum((t - avg) ** 2 for t in kept) / n)
    return {
        "skipped_iterations": skip,
        "min_us": ordered[0],
        "max_us": ordered[-1],
        "avg_us": avg,
        "p50_us": ordered[n // 2],
        "p95_us": _nearest_rank(ordered, 95),
        "p99_us": _nearest_rank(ordered, 99),
        "stdev_us": stdev,
        "cv_pct": stdev / avg * 100 if avg > 0 else 0.0,
    }
