"""``gosok bench bench=gemm``: GEMM TFLOPS and HBM bandwidth on every GPU at once.

Validates the config (nothing starts on a bad one), brings up one rank per GPU, runs
every (entry, backend, shape) of the chosen profile on all ranks concurrently, prints a
row per GPU as each step finishes (entry, backend, shape, node/gpu, median us, TFLOPS or
GB/s, % of the catalogue peak — "% of estimated peak" on the CPU fallback —, relative
error, status), then writes results.json (raw per-iteration times, timing method, the
peak used and its source) and compute.png to the run directory. Exit 1 when a relative
error exceeds its entry's tolerance or a measurement is under ``min_pct_of_peak``.

Run: ``gosok bench bench=gemm cluster=local`` (CPU fallback) or
``gosok bench bench=gemm cluster=<gpu cluster> bench.entries=[gemm_fp8_tensorwise]``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from gosok.benchmarks.compute.entries import gemm_shapes, hbm_shape, measurement_plan
from gosok.benchmarks.compute.rederive import rederive_gemm, reference_gemm
from gosok.benchmarks.compute.schema import profile_name, resolved_profile
from gosok.benchmarks.compute.validate import validate_gemm
from gosok.benchmarks.core.registry import Benchmark
from gosok.benchmarks.core.timing import GEMM_METHOD
from gosok.launcher.config.catalogue import gpu_spec, is_cpu


def verdict(records: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """(passed, problems): every failing measurement named with its GPU."""
    problems = []
    for record in records:
        for problem in record.get("problems", []):
            problems.append(
                f"{record['entry']} [{record.get('backend_used') or record['backend']}] "
                f"{record['shape']['name']} on node {record['node_rank']} gpu "
                f"{record['local_rank']} ({record['hostname']}): {problem}"
            )
    return not problems, problems


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (entry, backend): best and median value across shapes and GPUs, % of peak."""
    summary: dict[str, Any] = {}
    for record in records:
        if record.get("skipped"):
            continue
        key = f"{record['entry']}/{record.get('backend_used') or record['backend']}"
        value = record["tflops"] if record["family"] == "gemm" else record["gbps"]
        item = summary.setdefault(
            key, {"unit": record["peak_unit"], "values": [], "best_pct_of_peak": None}
        )
        item["values"].append(value)
        pct = record.get("pct_of_peak")
        if pct is not None and (item["best_pct_of_peak"] is None or pct > item["best_pct_of_peak"]):
            item["best_pct_of_peak"] = pct
    for item in summary.values():
        values = sorted(item.pop("values"))
        item["best"] = values[-1]
        item["median"] = values[len(values) // 2]
        item["measurements"] = len(values)
    return summary


def peak_info(gpu_key: str) -> dict[str, Any]:
    spec = gpu_spec(gpu_key)
    return {
        "gpu": spec.key,
        "name": spec.name,
        "estimate": is_cpu(spec),
        "bf16_tflops": spec.bf16_tflops,
        "fp8_tflops": spec.fp8_tflops,
        "hbm_tbps": spec.hbm_tbps,
        "dense": True,
        "sources": dict(spec.sources),
        "source": f"configs/gpu/{spec.key}.yaml",
    }


def plan_lines(cfg: Any) -> list[str]:
    """What a run would measure (pure): what ``dry_run=true`` prints."""
    bench, cluster = cfg.bench, cfg.cluster
    profile = resolved_profile(bench, cluster.gpu)
    plan = measurement_plan(bench, profile)
    world = cluster.nodes * cluster.gpus_per_node
    shapes = ", ".join(f"{s.name} ({s.label()})" for s in gemm_shapes(profile))
    return [
        f"gemm: {cluster.nodes} node(s) x {cluster.gpus_per_node} GPU(s) = {world} rank(s), "
        f"all measured at once; profile {profile_name(bench, cluster.gpu)}",
        f"method: {GEMM_METHOD}",
        f"warmup={profile.warmup_iters} samples={profile.iters} flush_l2={bench.flush_l2} "
        f"({profile.flush_bytes} B) hbm_bytes={profile.hbm_bytes}",
        f"GEMM shapes: {shapes}",
        f"HBM buffer: {hbm_shape(profile).label()}",
        f"{len(plan)} step(s):",
        *(f"  {entry} [{backend}] {shape.name}" for entry, backend, shape in plan),
    ]


def validate(cfg: Any) -> list[str]:
    return validate_gemm(cfg.bench, cfg.cluster.gpu)


def run(cfg: Any, console: Console) -> int:
    from gosok.benchmarks.compute.report import plot_compute
    from gosok.benchmarks.compute.step import measure_compute
    from gosok.benchmarks.core.harness import bench_session, run_dir, write_run_results

    bench = cfg.bench
    profile = resolved_profile(bench, cfg.cluster.gpu)
    peak = peak_info(cfg.cluster.gpu)
    if peak["estimate"]:
        console.print(
            "# peak: the catalogue's cpu entry is an ESTIMATE (cores x clock x FMA width), "
            "so % of peak is an estimate",
            highlight=False,
        )
    with bench_session(cfg, bench.timeout_s) as session:
        records = measure_compute(session.group, bench, console, cfg.cluster.gpu, cfg.seed)
        ok, problems = verdict(records)
        gpu_timing = session.group.backend == "nccl"
        payload = {
            "timing": {
                "method": GEMM_METHOD,
                "clock": "cuda events" if gpu_timing else "time.perf_counter",
                "warmup_iters": profile.warmup_iters,
                "iters": profile.iters,
                "flush_l2": bench.flush_l2,
                "flush_bytes": profile.flush_bytes,
                "flush": "an int8 buffer of flush_bytes is zeroed before each iteration, "
                "outside the timed span",
                "statistic": "TFLOPS and GB/s from the median of the per-iteration times",
                "concurrency": "every rank measures the same step at once, after a barrier",
                "flops": "2*M*N*K",
                "hbm_bytes_counted": "reads + writes (copy 2n, triad 3n)",
                "quantisation": "outside the timed region",
            },
            "profile": profile_name(bench, cfg.cluster.gpu),
            "peak": peak,
            "records": records,
            "summary": {"per_entry": summarize(records), "passed": ok, "problems": problems},
        }
        path = write_run_results("gemm", cfg, session, payload)
    if cfg.output.plot and records:
        plot_compute(
            records,
            run_dir() / "compute.png",
            f"GEMM / HBM per GPU, {cfg.cluster.name} ({cfg.cluster.nodes} nodes x "
            f"{cfg.cluster.gpus_per_node}), peak: {peak['name']}",
        )
    skipped = sorted(
        {f"{r['entry']} [{r['backend']}]: {r['skipped']}" for r in records if r["skipped"]}
    )
    for line in skipped:
        console.print(f"[yellow]SKIPPED[/] {escape(line)}", highlight=False)
    for problem in problems:
        console.print(f"[bold red]FAIL[/] {escape(problem)}", highlight=False)
    console.print(f"results: {path}", highlight=False)
    console.print(f"run directory: {run_dir()}", highlight=False)
    return 0 if ok else 1


def render(doc: dict[str, Any], args: Any) -> int:
    from gosok.benchmarks.compute.report import render_gemm

    return render_gemm(doc, args)


def figures(doc: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Median and best per kernel and backend (TFLOPS, or GB/s for HBM), from the
    re-derived records: what ``gosok report compare`` puts side by side."""
    out: dict[str, tuple[float | None, str]] = {}
    for key, item in summarize(doc["records"]).items():
        out[f"{key} median"] = (item["median"], item["unit"])
        out[f"{key} best"] = (item["best"], item["unit"])
    return out


def compare(a: dict[str, Any], b: dict[str, Any], args: Any) -> int:
    from gosok.benchmarks.core.compare import figure_rows, print_rows

    rows = figure_rows(figures(a), figures(b), args.tolerance, "gemm")
    return print_rows(rows, f"compute comparison (regression: drop > {args.tolerance:.0%})")


BENCHMARK = Benchmark(
    name="gemm",
    kind="gemm",
    summary="BF16/FP8 GEMM and HBM bandwidth on every GPU at once",
    validate=validate,
    plan=plan_lines,
    run=run,
    render=render,
    compare=compare,
    rederive=rederive_gemm,
    reference=reference_gemm,
)
