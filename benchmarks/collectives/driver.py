"""``gosok bench bench=collectives``: the collective sweep across the allocation.

For each op and dtype it walks the sizes (min_bytes, x step_factor, up to max_bytes), runs
``collective_step`` on every rank, reduces the per-rank times (nccl-tests' -a, default
avg), derives algbw/busbw, prints an nccl-tests style row as each size finishes, closes
each op with ``# Avg bus bandwidth``, then writes results.json and busbw.png to the run
directory. Exit 1 if any #wrong is non-zero or an average busbw is under min_busbw_gbps.

Run: ``gosok bench cluster=local bench=collectives bench.ops=[all_reduce]``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from gosok.benchmarks.collectives.ops import COLLECTIVES
from gosok.benchmarks.collectives.rederive import rederive_collectives, reference_collectives
from gosok.benchmarks.collectives.report import (
    averages_by_op,
    bandwidths,
    format_header,
    format_row,
    mean_time_us,
    plot_busbw,
    reduce_times,
    render_table,
)
from gosok.benchmarks.collectives.schema import sweep_sizes, validate_collectives
from gosok.benchmarks.core.registry import Benchmark
from gosok.benchmarks.core.timing import COLLECTIVE_METHOD
from gosok.launcher.ranks.plan import (
    backend_for,
    make_plan,
    rank_groups,
    split_groups,
    synthetic_nodes,
)
from gosok.launcher.results.journal import note


def step_records(
    op: str, dtype: str, bench: Any, groups: list[list[int]], per_rank: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Turn the per-rank answers of one step into one record per (group, mode)."""
    spec = COLLECTIVES[op]
    records = []
    for index, members in enumerate(groups):
        answers = [per_rank[r] for r in members]
        first = answers[0]
        for mode in first["modes"]:
            iterations = [a["modes"][mode]["iter_us"] for a in answers]
            times = [mean_time_us(rows) for rows in iterations]
            wrongs = [a["modes"][mode]["wrong"] for a in answers]
            time_us = reduce_times(times, bench.time_reduce)
            algbw, busbw = bandwidths(op, first["size_bytes"], time_us, len(members))
            records.append(
                {
                    "op": op,
                    "dtype": dtype,
                    "mode": mode,
                    "group": index,
                    "world_size": len(members),
                    "ranks": members,
                    "size_bytes": first["size_bytes"],
                    "count": first["count"],
                    "redop": spec.redop,
                    "root": bench.root if spec.rooted else None,
                    "time_us": time_us,
                    "time_reduce": bench.time_reduce,
                    "per_rank_time_us": times,
                    "per_rank_iter_us": iterations,
                    "algbw_gbps": algbw,
                    "busbw_gbps": busbw,
                    "busbw_factor": spec.busbw_factor(len(members)),
                    "wrong": -1 if min(wrongs) < 0 else sum(wrongs),
                }
            )
    return records


def bench_groups(plan: Any, bench: Any) -> list[list[int]]:
    """The rank groups a sweep measures side by side: ``bench.split``'s, else the scope's."""
    if getattr(bench, "split", ""):
        return split_groups(plan.world_size, bench.split)
    return rank_groups(plan, bench.scope)


def measure_collectives(
    group: Any, bench: Any, console: Console, groups: list[list[int]] | None = None
) -> list[dict[str, Any]]:
    """Run the whole sweep on a live WorkerGroup; print rows as they complete."""
    from gosok.benchmarks.collectives.ops import collective_step

    groups = groups or bench_groups(group.plan, bench)
    sizes = sweep_sizes(bench.min_bytes, bench.max_bytes, bench.step_factor)
    records: list[dict[str, Any]] = []
    multi = len(groups) > 1
    total = len(bench.ops) * len(bench.dtypes) * len(sizes)
    done = 0
    for op in bench.ops:
        for dtype in bench.dtypes:
            console.print(
                f"# {op} ({dtype}), {len(groups[0])} ranks per group, {len(groups)} group(s)",
                highlight=False,
            )
            console.print(format_header(multi, _skip(bench) is not None), highlight=False)
            op_records = []
            for size in sizes:
                per_rank = group.run(
                    collective_step,
                    op,
                    dtype,
                    size,
                    list(bench.modes),
                    bench.warmup_iters,
                    bench.iters,
                    bench.check,
                    bench.root,
                    groups,
                    timeout_s=bench.timeout_s,
                )
                new = step_records(op, dtype, bench, groups, per_rank)
                for record in new:
                    note("collectives", record)
                done += 1
                for index in range(len(groups)):
                    by_mode = {r["mode"]: r for r in new if r["group"] == index}
                    if by_mode:
                        label = str(index) if multi else None
                        console.print(
                            format_row(by_mode, label, _skip(bench)) + f"   [{done}/{total}]",
                            highlight=False,
                            markup=False,
                        )
                op_records += new
            avg = averages_by_op(op_records).get(f"{op}/{dtype}", 0.0)
            console.print(f"# Avg bus bandwidth    : {avg:.3f} GB/s\n", highlight=False)
            records += op_records
    return records


def verdict(records: list[dict[str, Any]], min_busbw_gbps: float) -> tuple[bool, list[str]]:
    problems = []
    wrong = [r for r in records if r["wrong"] > 0]
    if wrong:
        problems.append(
            f"{len(wrong)} measurement(s) with #wrong > 0, e.g. "
            f"{wrong[0]['op']} {wrong[0]['dtype']} {wrong[0]['size_bytes']} B"
        )
    for key, avg in averages_by_op(records).items():
        if avg < min_busbw_gbps:
            problems.append(
                f"{key}: average busbw {avg:.3f} GB/s < min_busbw_gbps {min_busbw_gbps}"
            )
    return not problems, problems


def plan_lines(cfg: Any) -> list[str]:
    """What a run would do (pure: no Ray, no torch): what ``dry_run=true`` prints."""
    cluster, bench = cfg.cluster, cfg.bench
    plan = make_plan(
        synthetic_nodes(cluster.nodes), cluster.gpus_per_node, 29500, backend_for(cluster.gpu)
    )
    groups = bench_groups(plan, bench)
    sizes = sweep_sizes(bench.min_bytes, bench.max_bytes, bench.step_factor)
    how = f"split {bench.split}" if bench.split else f"scope {bench.scope}"
    lines = [
        f"plan: {plan.summary()}",
        f"{how}: {len(groups)} group(s) of {len(groups[0])} rank(s), measured side by side",
        f"sweep: ops={list(bench.ops)} dtypes={list(bench.dtypes)} "
        f"sizes={len(sizes)} ({sizes[0]}..{sizes[-1]} B) "
        f"warmup={bench.warmup_iters} iters={bench.iters}",
    ]
    lines += [f"  rank {s.rank}: node {s.node_id} env {s.env}" for s in plan.ranks[:4]]
    if len(plan.ranks) > 4:
        lines.append(f"  ... {len(plan.ranks) - 4} more rank(s)")
    return lines


def validate(cfg: Any) -> list[str]:
    return validate_collectives(cfg.bench, cfg.cluster)


def run(cfg: Any, console: Console) -> int:
    from gosok.benchmarks.collectives.nccl_tests import write_documents
    from gosok.benchmarks.core.harness import bench_session, run_dir, write_run_results
    from gosok.launcher.results.store import load_results

    with bench_session(cfg, cfg.bench.timeout_s) as session:
        records = measure_collectives(session.group, cfg.bench, console)
        ok, problems = verdict(records, cfg.bench.min_busbw_gbps)
        payload = {
            "timing": {
                "method": COLLECTIVE_METHOD,
                "clock": "cuda events" if session.group.backend == "nccl" else "time.perf_counter",
                "warmup_iters": cfg.bench.warmup_iters,
                "iters": cfg.bench.iters,
                "time_per_rank": "mean over iters",
                "time_across_ranks": cfg.bench.time_reduce,
            },
            "records": records,
            "summary": {
                "avg_busbw_gbps": averages_by_op(records),
                "passed": ok,
                "problems": problems,
            },
        }
        path = write_run_results("collectives", cfg, session, payload)
    written = write_documents(
        run_dir(),
        load_results(path),
        [("collectives", records, cfg.bench, cfg.bench.per_iteration_skip)],
    )
    if cfg.output.plot and records:
        plot_busbw(
            records,
            run_dir() / "busbw.png",
            f"busbw vs size, {cfg.cluster.name} ({cfg.cluster.nodes} nodes x "
            f"{cfg.cluster.gpus_per_node})",
        )
    for problem in problems:
        console.print(f"[bold red]FAIL[/] {problem}")
    console.print(f"results: {path}", highlight=False)
    for item in written:
        console.print(f"nccl-tests JSON: {item}", highlight=False)
    console.print(f"run directory: {run_dir()}", highlight=False)
    return 0 if ok else 1


def _skip(bench: Any) -> int | None:
    """The per-iteration columns' skip (``bench.per_iteration_skip``), None when off."""

    def value(key: str, default: Any) -> Any:
        return bench.get(key, default) if isinstance(bench, dict) else getattr(bench, key, default)

    if not value("per_iteration", False):
        return None
    return int(value("per_iteration_skip", 0))


def render(doc: dict[str, Any], args: Any) -> int:
    print(render_table(doc["records"], _skip(doc["config"]["bench"])))
    if getattr(args, "plot", None):
        print(f"plot: {plot_busbw(doc['records'], args.plot)}")
    return 0


def figures(doc: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Bus bandwidth per op, dtype, mode and size (and its average per op), from the
    re-derived records: what ``gosok report compare`` puts side by side."""
    out: dict[str, tuple[float | None, str]] = {}
    by_op: dict[str, list[float]] = {}
    for r in doc["records"]:
        group = f" group {r['group']}" if r["group"] else ""
        name = f"{r['op']} {r['dtype']} {r['mode']} {r['size_bytes']} B{group} busbw"
        out[name] = (r["busbw_gbps"], "GB/s")
        by_op.setdefault(f"{r['op']} {r['dtype']} average busbw", []).append(r["busbw_gbps"])
    for name, values in by_op.items():
        out[name] = (sum(values) / len(values), "GB/s")
    return out


def compare(a: dict[str, Any], b: dict[str, Any], args: Any) -> int:
    from gosok.benchmarks.core.compare import figure_rows, print_rows

    rows = figure_rows(figures(a), figures(b), args.tolerance, "collectives")
    return print_rows(rows, f"collectives comparison (regression: drop > {args.tolerance:.0%})")


BENCHMARK = Benchmark(
    name="collectives",
    kind="collectives",
    summary="nccl-tests style sweep of every collective across the allocation",
    validate=validate,
    plan=plan_lines,
    run=run,
    render=render,
    compare=compare,
    rederive=rederive_collectives,
    reference=reference_collectives,
)
