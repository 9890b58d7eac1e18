"""GEMM / HBM results as a table, a PNG plot, and their re-derivation from raw times.

A ``bench=gemm`` results file holds, per (rank, entry, backend, shape), the raw
per-iteration times in microseconds. Everything else is derived from them and can be
re-derived here: median / mean / max, ``TFLOPS = flops / median`` for GEMMs,
``GB/s = bytes / median`` for HBM kernels, and % of the catalogue peak. On the CPU
fallback the catalogue peak is an estimate and the table says so.

Use: ``gosok report outputs/bench/<run>/results.json [--plot out.png]`` (exit 1 when the
reported figures do not follow from the raw times); ``format_header`` / ``format_row``
for the live table; ``rederive_problems(records)``; ``plot_compute(records, path)``.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

REL_TOL = 1e-9


def _value_unit(record: dict[str, Any]) -> tuple[float | None, str]:
    if record["family"] == "gemm":
        return record.get("tflops"), "TFLOPS"
    return record.get("gbps"), "GB/s"


def _shape_text(record: dict[str, Any]) -> str:
    shape = record["shape"]
    if shape.get("n_bytes"):
        return f"{shape['n_bytes'] / (1 << 20):g} MiB"
    return f"{shape['m']}x{shape['n']}x{shape['k']}"


def _where(record: dict[str, Any]) -> str:
    return f"n{record['node_rank']}/g{record['local_rank']}"


def format_header(estimate: bool, per_gpu: bool = True) -> str:
    pct = "% of estimated peak" if estimate else "% of peak"
    where = "node/gpu" if per_gpu else "gpus"
    spread = "" if per_gpu else f" {'min':>10s} {'slowest':>9s}"
    return (
        f"# {'entry':<20s} {'backend':<10s} {'shape':<30s} {'M x N x K':<18s} {where:>9s}"
        f" {'median us':>11s} {'TFLOPS or GB/s':>16s}{spread} {pct:>19s} {'rel. error':>10s}"
        f" {'status':>6s}"
    )


def _status(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return "SKIP"
    return "ok" if record.get("passed", True) else "FAIL"


def format_row(record: dict[str, Any]) -> str:
    """One GPU's measurement of one (entry, backend, shape)."""
    lead = (
        f"  {record['entry']:<20s} {record.get('backend_used') or record['backend']:<10s} "
        f"{record['shape']['name']:<30s} {_shape_text(record):<18s} {_where(record):>9s}"
    )
    if record.get("skipped"):
        return f"{lead} skipped: {record['skipped']}"
    value, unit = _value_unit(record)
    pct = record.get("pct_of_peak")
    pct_text = f"{pct:.1f}" if pct is not None else "n/a"
    return (
        f"{lead} {record['median_us']:11.1f} {value:9.3f} {unit:<6s} {pct_text:>19s}"
        f" {record['rel_error']:10.2e} {_status(record):>6s}"
    )


def format_summary_row(records: list[dict[str, Any]]) -> str:
    """One (entry, backend, shape) across all GPUs: median and minimum, and the slowest."""
    first = records[0]
    lead = (
        f"  {first['entry']:<20s} {first.get('backend_used') or first['backend']:<10s} "
        f"{first['shape']['name']:<30s} {_shape_text(first):<18s} {len(records):>9d}"
    )
    measured = [r for r in records if not r.get("skipped")]
    if not measured:
        return f"{lead} skipped: {first['skipped']}"
    values = [_value_unit(r)[0] for r in measured]
    unit = _value_unit(first)[1]
    slowest = min(measured, key=lambda r: _value_unit(r)[0])
    pcts = [r["pct_of_peak"] for r in measured if r.get("pct_of_peak") is not None]
    pct_text = f"{statistics.median(pcts):.1f}" if pcts else "n/a"
    status = "ok" if all(r.get("passed", True) for r in measured) else "FAIL"
    return (
        f"{lead} {statistics.median(r['median_us'] for r in measured):11.1f} "
        f"{statistics.median(values):9.3f} {unit:<6s} {min(values):10.3f} {_where(slowest):>9s}"
        f" {pct_text:>19s} {max(r['rel_error'] for r in measured):10.2e} {status:>6s}"
    )


def _step_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["entry"], record["backend"], record["shape"]["name"]


def render_table(records: list[dict[str, Any]], max_table_ranks: int = 16) -> str:
    """The whole table of a results file, in measurement order."""
    if not records:
        return "# no measurements"
    estimate = bool(records[0].get("peak_is_estimate"))
    ranks = {(r["node_rank"], r["local_rank"]) for r in records}
    per_gpu = len(ranks) <= max_table_ranks
    steps: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        steps[_step_key(record)].append(record)
    lines = [format_header(estimate, per_gpu)]
    for items in steps.values():
        if per_gpu:
            lines += [format_row(r) for r in sorted(items, key=lambda r: r["rank"])]
        else:
            lines.append(format_summary_row(items))
    if estimate:
        lines.append(
            "# peak: the catalogue's cpu entry is an ESTIMATE (not a spec); % of peak is indicative"
        )
    return "\n".join(lines)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b), 1e-300)


def rederive_problems(records: list[dict[str, Any]]) -> list[str]:
    """Every reported figure that does not follow from the record's raw times."""
    problems = []
    for record in records:
        if record.get("skipped"):
            continue
        times = record["times_us"]
        label = (
            f"{record['entry']} {record['backend']} {record['shape']['name']} rank {record['rank']}"
        )
        median = statistics.median(times)
        derived = {
            "median_us": median,
            "mean_us": statistics.fmean(times),
            "max_us": max(times),
            "min_us": min(times),
        }
        if record["family"] == "gemm":
            shape = record["shape"]
            flops = 2 * shape["m"] * shape["n"] * shape["k"]
            derived["flops"] = flops
            derived["tflops"] = flops / (median * 1e-6) / 1e12
            value = derived["tflops"]
        else:
            derived["gbps"] = record["bytes"] / (median * 1e-6) / 1e9
            value = derived["gbps"]
        if record.get("peak"):
            derived["pct_of_peak"] = 100.0 * value / record["peak"]
        for key, want in derived.items():
            if not _close(float(record[key]), float(want)):
                problems.append(f"{label}: {key} {record[key]} but raw times give {want}")
    return problems


def plot_compute(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG: one panel per (entry, backend), a point per GPU per shape, the spec peak line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if not record.get("skipped"):
            panels[(record["entry"], record.get("backend_used") or record["backend"])].append(
                record
            )
    count = max(len(panels), 1)
    cols = min(3, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, ((entry, backend), items) in zip(axes.flat, sorted(panels.items()), strict=False):
        shapes = list(dict.fromkeys(r["shape"]["name"] for r in items))
        gpus = sorted({(r["node_rank"], r["local_rank"]) for r in items})
        for node_rank, local_rank in gpus:
            mine = {
                r["shape"]["name"]: _value_unit(r)[0]
                for r in items
                if (r["node_rank"], r["local_rank"]) == (node_rank, local_rank)
            }
            xs = [i for i, s in enumerate(shapes) if s in mine]
            ax.plot(
                xs,
                [mine[shapes[i]] for i in xs],
                marker="o",
                ms=4,
                lw=0.8,
                label=f"node {node_rank} gpu {local_rank}",
            )
        unit = _value_unit(items[0])[1]
        peak = items[0].get("peak")
        if peak:
            estimate = " (estimate)" if items[0].get("peak_is_estimate") else ""
            ax.axhline(peak, color="black", ls="--", lw=1, label=f"spec peak {peak:g}{estimate}")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=35, ha="right", fontsize=6)
        ax.set_ylabel(unit)
        ax.set_title(f"{entry} [{backend}]", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title or "GEMM TFLOPS and HBM GB/s per GPU", fontsize=10)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)
    return target


def render_gemm(doc: dict[str, Any], args: argparse.Namespace) -> int:
    records = doc["records"]
    limit = (doc.get("config", {}).get("bench") or {}).get("max_table_ranks", 16)
    print(render_table(records, limit))
    for name, goal in (doc.get("goals") or {}).items():
        print(f"# goal {name}: {goal.get('text', goal)}")
    problems = rederive_problems(records)
    for problem in problems:
        print(f"NOT RE-DERIVABLE {problem}")
    if not problems:
        measured = sum(1 for r in records if not r.get("skipped"))
        print(f"# re-derived from raw times: {measured} measurement(s) match")
    if getattr(args, "plot", None):
        print(f"plot: {plot_compute(records, args.plot)}")
    return 1 if problems else 0
