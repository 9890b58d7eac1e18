"""Re-derivation of GEMM / HBM results (``bench=gemm``, the GPU sweep, and every compute
step of a suite): median / mean / min / max of ``times_us``, ``TFLOPS = 2·M·N·K / median``,
``GB/s = bytes / median`` (bytes from the kernel's own count), % of the recorded peak, the
tolerance verdicts and the summary, with the run's own functions (``compute.entries``).
"""

from __future__ import annotations

from typing import Any

from gosok.benchmarks.compute.entries import KERNELS, annotate, gbps_from, tflops_from, time_stats
from gosok.benchmarks.core.rederive import (
    Rederivation,
    Rederiver,
    as_dict,
    as_list,
    difference,
    json_copy,
    require,
    settings_of,
    short,
    times_of,
)
from gosok.launcher.config.schema import GpuSpec


def step_figures(r: Rederivation, step: dict[str, Any], label: str) -> dict[str, Any] | None:
    """Re-derived time statistics and TFLOPS / GB/s of one compute step record, or None."""
    entry = step["entry"]
    require(entry in KERNELS, f"{label}: unknown compute entry {entry!r}")
    spec = KERNELS[entry]
    require(
        step["family"] == spec.kind,
        f"{label}: family {step['family']!r} is not {spec.kind!r} for {entry}",
    )
    if "times_us" not in step:
        r.missing.append(f"{label}: no times_us")
        return None
    times = times_of(step["times_us"], f"{label}.times_us")
    derived: dict[str, Any] = dict(time_stats(times))
    shape = as_dict(step["shape"], f"{label}.shape")
    if spec.kind == "gemm":
        assert spec.flops_for is not None
        derived["flops"] = spec.flops_for(shape["m"], shape["n"], shape["k"])
        derived["tflops"] = tflops_from(derived["flops"], derived["median_us"])
    else:
        assert spec.bytes_for is not None
        derived["bytes"] = spec.bytes_for(shape["n_bytes"])
        derived["gbps"] = gbps_from(derived["bytes"], derived["median_us"])
    for key, value in derived.items():
        r.same(f"{label}: {key}", step[key], value)
    return derived


GEMM_DERIVED = (
    "peak",
    "peak_unit",
    "peak_is_estimate",
    "tolerance",
    "min_pct_of_peak",
    "pct_of_peak",
    "problems",
    "passed",
)


def _peak_gpu(peak: dict[str, Any]) -> GpuSpec:
    return GpuSpec(
        name=peak["name"],
        key=peak["gpu"],
        bf16_tflops=peak["bf16_tflops"],
        fp8_tflops=peak["fp8_tflops"],
        hbm_tbps=peak["hbm_tbps"],
    )


def _gemm(r: Rederivation) -> None:
    from gosok.benchmarks.compute.driver import summarize, verdict
    from gosok.launcher.config.catalogue import gpu_spec

    doc = r.doc
    assert doc is not None
    peak = as_dict(doc["peak"], "peak")
    gpu = _peak_gpu(peak)
    config = as_dict(doc["config"], "config")
    # ``gpu_sweep`` writes kind gemm too: one local GPU, its arguments under config.sweep.
    sweep = "sweep" in config and "cluster" not in config
    try:
        ours = gpu_spec(peak["gpu"])
        theirs = {k: peak[k] for k in ("name", "bf16_tflops", "fp8_tflops", "hbm_tbps")}
        mine = {k: getattr(ours, k) for k in theirs}
        if difference(theirs, mine) is not None:
            r.notes.append(
                f"the recorded peaks of {peak['gpu']!r} differ from gosok's catalogue (% of "
                f"peak used the file's): file {theirs}, gosok {mine}"
            )
    except KeyError:
        r.notes.append(f"the recorded GPU {peak['gpu']!r} is not in gosok's catalogue")
    records = as_list(doc["records"], "records")
    min_pct = 0.0
    if not sweep:
        r.same("peak.gpu (config cluster.gpu)", peak["gpu"], config["cluster"]["gpu"])
        bench = settings_of(config["bench"], "config.bench")
        min_pct = bench.min_pct_of_peak
        _gemm_coverage(r, bench, peak["gpu"], records, config["cluster"])
    for index, record in enumerate(records):
        record = as_dict(record, f"record {index}")
        label = (
            f"record {index} ({record['entry']} {record['backend']} "
            f"{record['shape']['name']} rank {record['rank']})"
        )
        if record.get("skipped"):
            continue
        figures = step_figures(r, record, label)
        if figures is None:
            continue
        record.update(figures)
        judged = annotate({**record, "problems": None, "passed": None}, gpu, min_pct)
        for key in GEMM_DERIVED:
            r.same(f"{label}: {key}", record.get(key), judged[key])
            record[key] = judged[key]
    summary = as_dict(doc["summary"], "summary")
    if sweep:
        _sweep_summary(r, doc, records, summary)
        return
    passed, problems = verdict(records)
    derived = {"per_entry": summarize(records), "passed": passed, "problems": problems}
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)


def _sweep_summary(
    r: Rederivation, doc: dict[str, Any], records: list[Any], summary: dict[str, Any]
) -> None:
    """The GPU sweep's pass/fail summary and goal ratios, from the re-derived records."""
    from gosok.benchmarks.compute.gpu_sweep import goal_ratios

    failures = [x for x in records if not x["passed"]]
    derived = {
        "passed": not failures,
        "problems": [
            f"{x['entry']} {x['backend']} {x['shape']['name']}: {p}"
            for x in failures
            for p in x["problems"]
        ],
    }
    for key, value in derived.items():
        r.same(f"summary.{key}", summary.get(key), value)
    summary.update(derived)
    goals = json_copy(goal_ratios(records))
    r.same("goals", doc.get("goals"), goals)
    doc["goals"] = goals


def _gemm_coverage(
    r: Rederivation, bench: Any, gpu_key: str, records: list[Any], cluster: dict[str, Any]
) -> None:
    """Every (entry, backend, shape) of the configured plan, measured once on every GPU."""
    from gosok.benchmarks.compute.entries import measurement_plan
    from gosok.benchmarks.compute.schema import resolved_profile

    world = cluster["nodes"] * cluster["gpus_per_node"]
    plan = measurement_plan(bench, resolved_profile(bench, gpu_key))
    counts: dict[tuple[str, str, str], int] = {}
    for record in records:
        key = (record["entry"], record["backend"], record["shape"]["name"])
        counts[key] = counts.get(key, 0) + 1
    wanted = {(entry, backend, shape.name): world for entry, backend, shape in plan}
    r.same("records (one per GPU and planned step)", counts, wanted)


rederive_gemm = Rederiver("gemm", _gemm)


# --- against the auditor's reference ----------------------------------------------------------


def reference_gemm(doc: dict[str, Any], rederived: dict[str, Any], contract: Any) -> list[str]:
    """How a GEMM file's recorded peaks differ from gosok's catalogue."""
    doc = rederived
    from gosok.launcher.config.catalogue import gpu_spec

    peak = doc.get("peak") or {}
    try:
        ours = gpu_spec(str(peak.get("gpu")))
    except KeyError:
        return [f"GPU type {repr(peak.get('gpu'))} is not in gosok's catalogue"]
    problems = []
    for field in ("bf16_tflops", "fp8_tflops", "hbm_tbps"):
        if field in peak and difference(peak[field], getattr(ours, field)) is not None:
            problems.append(
                f"peak.{field}: file {short(peak[field])}, catalogue {short(getattr(ours, field))}"
            )
    return problems
