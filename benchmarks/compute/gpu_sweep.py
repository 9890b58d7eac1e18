"""Every GEMM backend and FP8 recipe, and the HBM kernels, on one local GPU, no Ray.

Measures with the same step as ``bench=gemm`` (fresh random inputs, quantisation outside
the timed region, L2 flush between separately timed iterations, median of the times) at
4096³, 8192³ and the Llama-3-70B projections (QKV, O, MLP up/gate, MLP down) at 4096 and
16384 tokens; prints the table; writes a sealed results file (kind ``gemm``, readable by
``gosok report``) with the device name, driver, CUDA and torch versions; and computes the
goal ratios:

* scaled_mm FP8 tensorwise at 8192³, % of the dense FP8 peak (goal >= 75%);
* our Triton FP8 / scaled_mm TFLOPS on the same shapes and recipe (goal >= 95%, geometric
  mean over the pairs; the worst pair is reported too);
* BF16 (torch) % of the dense BF16 peak at its best shape (goal >= 80%);
* HBM device copy % of the spec bandwidth (goal >= 85%).

Run::

    python -m gosok.benchmarks.compute.gpu_sweep --out benchmarks/results/h100_sxm/gemm_sweep.json
    python -m gosok.benchmarks.compute.gpu_sweep --cpu --small --out /tmp/sweep.json   # smoke test

The GPU type is recognised from the device name (``--gpu <catalogue key>`` to force it).
Exit 1 when a relative error is over its tolerance; missed goals are reported, not fatal.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gosok.benchmarks.compute.entries import annotate, gemm_shapes, hbm_shape
from gosok.benchmarks.compute.schema import ComputeProfile, cpu_profile, gpu_profile
from gosok.benchmarks.compute.step import LocalContext, compute_step

GEMM_BACKENDS: dict[str, tuple[str, ...]] = {
    "gemm_bf16": ("torch", "triton"),
    "gemm_fp8_tensorwise": ("scaled_mm", "triton"),
    "gemm_fp8_rowwise": ("scaled_mm", "triton"),
    "gemm_fp8_blockwise": ("scaled_mm", "triton"),
    "hbm_copy": ("torch",),
    "hbm_triad": ("torch", "triton"),
}
GOALS = {
    "fp8_scaled_mm_tensorwise_pct_of_peak": 75.0,
    "triton_over_scaled_mm_fp8": 0.95,
    "bf16_pct_of_peak": 80.0,
    "hbm_copy_pct_of_spec": 85.0,
}


def sweep_profile(small: bool, args: argparse.Namespace) -> ComputeProfile:
    if small:  # the benchmark's CPU profile, trimmed for a smoke test
        profile = replace(cpu_profile(), squares=[128, 256], tokens=[128], iters=3)
    else:
        profile = gpu_profile()
    if args.squares:
        profile.squares = args.squares
    if args.tokens:
        profile.tokens = args.tokens
    if args.iters:
        profile.iters = args.iters
    if args.warmup is not None:
        profile.warmup_iters = args.warmup
    return profile


def detect_gpu_key(device_name: str) -> str | None:
    """The catalogue key whose device_name_match fits ``device_name``."""
    from gosok.launcher.config.catalogue import load_catalogue

    for key, spec in load_catalogue().items():
        if any(match in device_name for match in spec.device_name_match):
            return key
    return None


def _find(records: list[dict[str, Any]], entry: str, backend: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["entry"] == entry and r.get("backend_used") == backend and not r["skipped"]
    ]


def _goal(value: float | None, goal: float, text: str, basis: str, percent: bool) -> dict:
    met = None if value is None else value >= goal
    shown = "not measured" if value is None else (f"{value:.1f}%" if percent else f"{value:.3f}")
    target = f"{goal:g}%" if percent else f"{goal:g}"
    verdict = "n/a" if met is None else ("met" if met else "MISSED")
    return {
        "value": value,
        "goal": goal,
        "met": met,
        "basis": basis,
        "text": f"{text}: {shown} (goal >= {target}) {verdict}",
    }


def goal_ratios(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's goal figures, each with its value, goal, basis and verdict."""
    goals: dict[str, dict[str, Any]] = {}
    tensorwise = _find(records, "gemm_fp8_tensorwise", "scaled_mm")
    squares = [r for r in tensorwise if r["shape"]["name"].startswith("square_")]
    target = next((r for r in squares if r["shape"]["name"] == "square_8192"), None)
    if target is None and squares:
        target = max(squares, key=lambda r: r["shape"]["m"])
    goals["fp8_scaled_mm_tensorwise_pct_of_peak"] = _goal(
        target["pct_of_peak"] if target else None,
        GOALS["fp8_scaled_mm_tensorwise_pct_of_peak"],
        "scaled_mm FP8 tensorwise % of dense FP8 peak",
        f"shape {target['shape']['name']}" if target else "no scaled_mm tensorwise square",
        percent=True,
    )
    ratios = []
    for recipe in ("tensorwise", "rowwise", "blockwise"):
        entry = f"gemm_fp8_{recipe}"
        ours = {r["shape"]["name"]: r for r in _find(records, entry, "triton")}
        for theirs in _find(records, entry, "scaled_mm"):
            mine = ours.get(theirs["shape"]["name"])
            if mine is not None:
                ratios.append(
                    (mine["tflops"] / theirs["tflops"], f"{recipe} {mine['shape']['name']}")
                )
    geomean = math.exp(sum(math.log(r) for r, _ in ratios) / len(ratios)) if ratios else None
    worst = min(ratios) if ratios else None
    goal = _goal(
        geomean,
        GOALS["triton_over_scaled_mm_fp8"],
        "Triton FP8 / scaled_mm, geometric mean",
        f"{len(ratios)} (recipe, shape) pair(s)",
        percent=False,
    )
    goal["worst"] = {"ratio": worst[0], "pair": worst[1]} if worst else None
    goal["pairs"] = {pair: ratio for ratio, pair in ratios}
    goals["triton_over_scaled_mm_fp8"] = goal
    bf16 = _find(records, "gemm_bf16", "torch")
    best = max(bf16, key=lambda r: r["tflops"]) if bf16 else None
    goals["bf16_pct_of_peak"] = _goal(
        best["pct_of_peak"] if best else None,
        GOALS["bf16_pct_of_peak"],
        "BF16 (torch) % of dense BF16 peak, best shape",
        f"shape {best['shape']['name']}" if best else "no bf16 measurement",
        percent=True,
    )
    copy = _find(records, "hbm_copy", "torch")
    goals["hbm_copy_pct_of_spec"] = _goal(
        copy[0]["pct_of_peak"] if copy else None,
        GOALS["hbm_copy_pct_of_spec"],
        "HBM copy % of spec bandwidth",
        f"buffer {copy[0]['shape']['n_bytes']} B, bytes = read + written" if copy else "none",
        percent=True,
    )
    return goals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gosok.benchmarks.compute.gpu_sweep")
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (smoke test)")
    parser.add_argument("--small", action="store_true", help="small shapes and few iterations")
    parser.add_argument("--gpu", help="catalogue key (default: recognised from the device name)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--squares", type=int, nargs="+", help="square sizes to measure")
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts for layer shapes")
    parser.add_argument("--iters", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--no-flush", action="store_true", help="skip the L2 flush")
    parser.add_argument("--with-reference", action="store_true", help="also time fp8 reference")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from gosok.benchmarks.compute.driver import peak_info
    from gosok.benchmarks.compute.report import format_header, format_row
    from gosok.launcher.config.catalogue import gpu_spec
    from gosok.launcher.ranks.fingerprint import node_fingerprint
    from gosok.launcher.results.store import write_results

    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible; use --cpu for a smoke test", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    gpu_key = args.gpu or ("cpu" if device.type == "cpu" else detect_gpu_key(name))
    if gpu_key is None:
        print(f"error: {name!r} is not in the GPU catalogue; pass --gpu <key>", file=sys.stderr)
        return 2
    gpu = gpu_spec(gpu_key)
    profile = sweep_profile(args.small, args)
    threads = args.threads or torch.get_num_threads()
    ctx = LocalContext(device=str(device))
    fp8_extra = ("reference",) if args.with_reference or device.type == "cpu" else ()
    plan = []
    for entry, backends in GEMM_BACKENDS.items():
        if entry.startswith("gemm_fp8"):
            backends = fp8_extra + backends
        shapes = gemm_shapes(profile) if entry.startswith("gemm") else [hbm_shape(profile)]
        plan += [(entry, backend, shape) for backend in backends for shape in shapes]
    print(f"# device {name} -> catalogue {gpu.key} ({gpu.name}); torch {torch.__version__}")
    print(format_header(gpu.key == "cpu"))
    records = []
    started = time.time()
    for done, (entry, backend, shape) in enumerate(plan, start=1):
        record = compute_step(
            ctx,
            entry,
            backend,
            asdict(shape),
            profile.warmup_iters,
            profile.iters,
            not args.no_flush,
            profile.flush_bytes,
            args.seed,
            threads,
            sync_start=False,
        )
        record = annotate(record, gpu, 0.0)
        print(f"{format_row(record)}   [{done}/{len(plan)}]", flush=True)
        records.append(record)
    goals = goal_ratios(records)
    for goal in goals.values():
        print(f"# goal {goal['text']}")
    failures = [r for r in records if not r["passed"]]
    doc = {
        "kind": "gemm",
        "config": {"sweep": vars(args), "profile": asdict(profile)},
        "env": {
            "device_name": name,
            "node": node_fingerprint(),
            "cuda": torch.version.cuda,
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        },
        "timing": {
            "method": records[0]["timing"] if records else None,
            "warmup_iters": profile.warmup_iters,
            "iters": profile.iters,
            "flush_l2": not args.no_flush,
            "flush_bytes": profile.flush_bytes,
            "statistic": "TFLOPS and GB/s from the median of the per-iteration times",
        },
        "peak": peak_info(gpu.key),
        "records": records,
        "goals": goals,
        "summary": {
            "passed": not failures,
            "problems": [
                f"{r['entry']} {r['backend']} {r['shape']['name']}: {p}"
                for r in failures
                for p in r["problems"]
            ],
        },
        "started_unix": started,
        "finished_unix": time.time(),
    }
    write_results(Path(args.out), doc)
    if gpu.key == "cpu":
        print("# peak: the cpu catalogue entry is an ESTIMATE; % of peak is indicative")
    print(f"results: {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
