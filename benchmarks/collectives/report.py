"""Collective results as nccl-tests prints them, as a PNG plot, and as bandwidth maths.

The bandwidth formulas live here once: ``algbw = S / t`` and ``busbw = algbw x factor``
with the factor from the op's ``Collective`` record (nccl-tests doc/PERFORMANCE.md). GB/s means 1e9
bytes per second, as in nccl-tests.

Use: ``bandwidths("all_reduce", size_bytes, time_us, n)``; ``format_header()`` /
``format_row(...)`` for the live table; ``plot_busbw(records, path)``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from gosok.benchmarks.collectives.ops import COLLECTIVES


def bandwidths(op: str, size_bytes: int, time_us: float, n: int) -> tuple[float, float]:
    """(algbw_gbps, busbw_gbps) for one measurement, exactly as nccl-tests defines them."""
    if time_us <= 0:
        return 0.0, 0.0
    algbw = size_bytes / (time_us * 1e-6) / 1e9
    return algbw, algbw * COLLECTIVES[op].busbw_factor(n)


def mean_time_us(iterations_us: list[float]) -> float:
    """A rank's time per call: the mean of its back-to-back iterations (the whole span
    divided by the number of calls, as nccl-tests times it)."""
    return sum(iterations_us) / len(iterations_us)


def reduce_times(per_rank_us: list[float], how: str) -> float:
    """Reduce per-rank mean times to one, like nccl-tests' -a option (default: avg)."""
    if how == "avg":
        return sum(per_rank_us) / len(per_rank_us)
    if how == "min":
        return min(per_rank_us)
    if how == "max":
        return max(per_rank_us)
    if how == "rank0":
        return per_rank_us[0]
    raise ValueError(f"unknown time reduction {how!r}; allowed: avg, min, max, rank0")


ITER_COLUMNS = ("i_min", "i_max", "i_p99", "i_cv%")


def format_header(group_label: bool, per_iteration: bool = False) -> str:
    lead = f"{'group':>8s}" if group_label else ""
    blank = " " * len(lead)
    half = f"{'time':>10s} {'algbw':>7s} {'busbw':>7s} {'#wrong':>6s}"
    units = f"{'(us)':>10s} {'(GB/s)':>7s} {'(GB/s)':>7s} {'':>6s}"
    if per_iteration:  # nccl-tests -I 1: the slowest rank's time per iteration
        half += "".join(f" {c:>9s}" for c in ITER_COLUMNS)
        units += "".join(f" {u:>9s}" for u in ("(us)", "(us)", "(us)", ""))
    width = len(half)
    return "\n".join(
        [
            f"#{blank}{'':>47s}   {'out-of-place':^{width}s}   {'in-place':^{width}s}",
            f"#{lead}{'size':>11s}{'count':>13s}{'type':>9s}{'redop':>7s}{'root':>7s}"
            f"   {half}   {half}",
            f"#{blank}{'(B)':>11s}{'(elements)':>13s}{'':>23s}   {units}   {units}",
        ]
    )


def _iteration_cells(record: dict[str, Any] | None, skip: int) -> str:
    from gosok.benchmarks.collectives.iterations import iteration_stats, slowest_per_iteration

    stats = None
    if record is not None and record.get("per_rank_iter_us"):
        stats = iteration_stats(slowest_per_iteration(record["per_rank_iter_us"]), skip)
    elif record is not None and record.get("iteration_stats"):
        stats = record["iteration_stats"]  # as an nccl-tests file states it
    if stats is None:
        return "".join(f" {'N/A':>9s}" for _ in ITER_COLUMNS)
    values = (stats["min_us"], stats["max_us"], stats["p99_us"])
    return "".join(f" {v:9.1f}" for v in values) + f" {stats['cv_pct']:9.1f}"


def _half(record: dict[str, Any] | None, skip: int | None = None) -> str:
    cells = "" if skip is None else _iteration_cells(record, skip)
    if record is None:
        return f"{'N/A':>10s} {'N/A':>7s} {'N/A':>7s} {'N/A':>6s}" + cells
    wrong = "N/A" if record["wrong"] < 0 else str(record["wrong"])
    return (
        f"{record['time_us']:10.1f} {record['algbw_gbps']:7.3f} "
        f"{record['busbw_gbps']:7.3f} {wrong:>6s}" + cells
    )


def format_row(
    by_mode: dict[str, dict[str, Any]], group_label: str | None, skip: int | None = None
) -> str:
    """One size's row; ``skip`` (not None) adds the per-iteration columns, the summary
    leaving out the first ``skip`` iterations (nccl-tests -K)."""
    any_record = next(iter(by_mode.values()))
    lead = f"{group_label:>8s}" if group_label is not None else ""
    root = str(any_record["root"]) if any_record["root"] is not None else "-1"
    return (
        f" {lead}{any_record['size_bytes']:>11d}{any_record['count']:>13d}"
        f"{any_record['dtype']:>9s}{any_record['redop']:>7s}{root:>7s}"
        f"   {_half(by_mode.get('out_of_place'), skip)}   {_half(by_mode.get('in_place'), skip)}"
    )


def average_busbw(records: list[dict[str, Any]]) -> float:
    """nccl-tests' closing figure: plain mean of busbw over every size and mode measured."""
    values = [r["busbw_gbps"] for r in records]
    return sum(values) / len(values) if values else 0.0


def averages_by_op(records: list[dict[str, Any]]) -> dict[str, float]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[f"{record['op']}/{record['dtype']}"].append(record)
    return {key: average_busbw(items) for key, items in grouped.items()}


def render_table(records: list[dict[str, Any]], skip: int | None = None) -> str:
    """The whole nccl-tests style table for a results file, op by op (``skip``: with the
    per-iteration columns, see ``format_row``)."""
    lines: list[str] = []
    multi_group = len({r["group"] for r in records}) > 1
    by_op: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_op[(record["op"], record["dtype"])].append(record)
    for (op, dtype), items in by_op.items():
        lines.append(f"# {op} ({dtype}), {items[0]['world_size']} ranks per group")
        lines.append(format_header(multi_group, skip is not None))
        rows: dict[tuple[Any, int], dict[str, dict[str, Any]]] = defaultdict(dict)
        for record in items:
            rows[(record["group"], record["size_bytes"])][record["mode"]] = record
        for (group, _), by_mode in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            lines.append(format_row(by_mode, str(group) if multi_group else None, skip))
        lines.append(f"# Avg bus bandwidth    : {average_busbw(items):.3f} GB/s")
        lines.append("")
    return "\n".join(lines)


def plot_busbw(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG of busbw against message size, one line per op/dtype/mode (group 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        if record["group"] == min(r["group"] for r in records):
            label = f"{record['op']} {record['dtype']} {record['mode'].replace('_', '-')}"
            series[label].append((record["size_bytes"], record["busbw_gbps"]))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(title or "busbw vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)
    return target
