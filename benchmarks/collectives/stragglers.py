"""Who is slow, from every timed iteration of every rank (``gosok report --stragglers``).

Per op, dtype, placement and size, from ``per_rank_iter_us`` (gosok) or
``per_process_max_times_us`` (nccl-tests ``-I 1``): the fastest and slowest rank by mean
time and the spread between them, the noisiest rank (coefficient of variation), the
iterations where the slowest rank took more than ``threshold`` x the mean (a spike: on
every rank at once is the system, on one rank is a straggler), and per node the spread of
its ranks' means. The same questions NVIDIA's analyze_perf_json.py asks of nccl-tests'
files, asked of gosok's.

Use: ``straggler_lines(records, hosts={rank: hostname}, threshold=1.5)``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from gosok.benchmarks.collectives.report import mean_time_us

SPIKE_THRESHOLD = 1.5


def _cv(values: list[float]) -> float:
    mean = statistics.fmean(values)
    return statistics.pstdev(values) / mean * 100 if mean > 0 else 0.0


def record_lines(record: dict[str, Any], hosts: dict[int, str], threshold: float) -> list[str]:
    rows = record.get("per_rank_iter_us")
    if not rows or len(rows) < 2:
        return []
    ranks = record["ranks"]
    means = {rank: mean_time_us(row) for rank, row in zip(ranks, rows, strict=True)}
    fast, slow = min(means, key=means.get), max(means, key=means.get)
    spread = means[slow] - means[fast]
    noisy = max(zip(ranks, rows, strict=True), key=lambda item: _cv(item[1]))

    def who(rank: int) -> str:
        return f"rank {rank} ({hosts[rank]})" if rank in hosts else f"rank {rank}"

    head = (
        f"{record['op']} {record['dtype']} {record['mode']} {record['size_bytes']} B"
        + (f" group {record['group']}" if record.get("group") else "")
        + (f" repeat {record['repeat']}" if record.get("repeat") else "")
    )
    lines = [
        f"{head}: fastest {who(fast)} {means[fast]:.1f} us, slowest {who(slow)} "
        f"{means[slow]:.1f} us (+{spread / means[fast] * 100 if means[fast] else 0:.1f}%); "
        f"noisiest {who(noisy[0])} cv {_cv(noisy[1]):.1f}%"
    ]
    worst = [max(column) for column in zip(*rows, strict=True)]
    average = statistics.fmean(worst)
    for index, value in enumerate(worst):
        if average > 0 and value > threshold * average:
            spiked = [
                r for r, row in zip(ranks, rows, strict=True) if row[index] > threshold * average
            ]
            kind = (
                "system-wide"
                if len(spiked) == len(ranks)
                else f"straggler {who(spiked[0])}"
                if len(spiked) == 1
                else f"{len(spiked)} of {len(ranks)} ranks"
            )
            lines.append(
                f"  spike at iteration {index}: {value:.1f} us ({value / average:.1f}x), {kind}"
            )
    by_node: dict[str, list[float]] = defaultdict(list)
    for rank, mean in means.items():
        by_node[hosts.get(rank, "?")].append(mean)
    if len(by_node) > 1:
        parts = [
            f"{host} {min(values):.1f}-{max(values):.1f} us" for host, values in by_node.items()
        ]
        lines.append("  per node (rank means): " + ", ".join(parts))
    return lines


def straggler_lines(
    records: list[dict[str, Any]], hosts: dict[int, str], threshold: float = SPIKE_THRESHOLD
) -> list[str]:
    """Every record's straggler and spike lines; a note when no record has per-rank
    iterations (files written before gosok kept them)."""
    lines = [line for r in records for line in record_lines(r, hosts, threshold)]
    return lines or ["no per-rank iteration times in these results (nothing to rank)"]
