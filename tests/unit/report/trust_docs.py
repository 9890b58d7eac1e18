"""Results documents of every kind built from made-up raw measurements, without Ray.

The raw data (per-sample GEMM / HBM times, per-rank collective times, isolation group
readings) is invented; everything derived from it goes through the same code a real run
uses (``step_records``, ``annotate``, ``key_figure``, ``evaluate_phases``, ``isolate``,
``capacity``), so the documents are what ``gosok bench`` would write and must re-derive.

Use: ``suite_doc(nodes=4, gpu="h200", slow_node=2)``, ``gemm_doc()``, ``collectives_doc()``;
``save(path, doc, key=None)`` signs (optionally), seals and writes one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gosok.benchmarks.collectives.driver import step_records
from gosok.benchmarks.collectives.driver import verdict as collectives_verdict
from gosok.benchmarks.collectives.ops import COLLECTIVES
from gosok.benchmarks.collectives.report import averages_by_op
from gosok.benchmarks.collectives.schema import CollectivesBenchConfig, sweep_sizes
from gosok.benchmarks.compute.driver import peak_info, summarize
from gosok.benchmarks.compute.driver import verdict as gemm_verdict
from gosok.benchmarks.compute.entries import (
    KERNELS,
    annotate,
    gbps_from,
    measurement_plan,
    tflops_from,
    time_stats,
)
from gosok.benchmarks.compute.schema import ComputeProfile, GemmBenchConfig, resolved_profile
from gosok.benchmarks.suite.derive import isolation_due, judge
from gosok.benchmarks.suite.evaluate import key_figure
from gosok.benchmarks.suite.isolation import isolate
from gosok.benchmarks.suite.phases import compute_kernels, evaluate_phases, rail_figures
from gosok.benchmarks.suite.schema import load_contract, reference_suite
from gosok.launcher.config.catalogue import gpu_spec
from gosok.launcher.ranks.plan import split_groups
from gosok.launcher.results.signing import sign_doc
from gosok.launcher.results.store import SCHEMA, write_results

STARTED = 1_750_000_000.0


def _base(kind: str, cluster: dict[str, Any], extra_config: dict[str, Any], nonce: str | None):
    return {
        "schema": SCHEMA,
        "created_unix": STARTED + 100,
        "kind": kind,
        "config": {"cluster": cluster, **extra_config},
        "env": {
            "driver": {"torch": "2.13.0", "cuda": None, "nccl": None, "ray": "2.60.0"},
            "placement": [
                {
                    "rank": r,
                    "node_rank": r // cluster["gpus_per_node"],
                    "local_rank": r % cluster["gpus_per_node"],
                    "node_id": f"{r // cluster['gpus_per_node']:056x}",
                    "ip": f"10.0.0.{r // cluster['gpus_per_node']}",
                    "hostname": f"gpu-{r // cluster['gpus_per_node']:03d}",
                    "pid": 1000 + r,
                    "device_name": None,
                }
                for r in range(cluster["nodes"] * cluster["gpus_per_node"])
            ],
        },
        "started_unix": STARTED,
        "finished_unix": STARTED + 90,
        "audit": {"nonce": nonce, "nodes": []},
    }


def _cluster(name: str, provider: str, gpu: str, nodes: int, per_node: int) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "kind": "existing",
        "gpu": gpu,
        "nodes": nodes,
        "gpus_per_node": per_node,
    }


def _step(
    entry: str, backend: str, shape: Any, rank: int, per_node: int, times: list[float]
) -> dict[str, Any]:
    """A record as ``compute_step`` returns it, for made-up per-sample times."""
    spec = KERNELS[entry]
    record: dict[str, Any] = {
        "entry": entry,
        "family": spec.kind,
        "dtype": spec.peak if spec.kind == "gemm" else "float32",
        "recipe": spec.recipe,
        "backend": backend,
        "shape": asdict(shape),
        "rank": rank,
        "node_rank": rank // per_node,
        "local_rank": rank % per_node,
        "node_id": f"node{rank // per_node}",
        "hostname": f"host-{rank // per_node}",
        "device": f"cuda:{rank % per_node}",
        "device_name": "synthetic",
        "timing": {"method": "synthetic"},
        "skipped": None,
        "backend_used": backend,
        "rel_error": 1e-3 if spec.kind == "gemm" else 0.0,
        "rel_error_vs_reference_backend": 1e-4 if spec.kind == "gemm" else None,
    }
    if spec.kind == "gemm":
        record["flops"] = spec.flops_for(shape.m, shape.n, shape.k)
    else:
        record["bytes"] = spec.bytes_for(shape.n_bytes)
    record["times_us"] = times
    record.update(time_stats(times))
    if spec.kind == "gemm":
        record["tflops"] = tflops_from(record["flops"], record["median_us"])
    else:
        record["gbps"] = gbps_from(record["bytes"], record["median_us"])
    return record


def _samples(rng: random.Random, base_us: float, count: int = 5) -> list[float]:
    return [base_us * (1 + rng.uniform(-0.01, 0.01)) for _ in range(count)]


def _collective_answers(
    op: str, size: int, groups: list[list[int]], busbw: dict[int, float], rng: random.Random
) -> list[dict[str, Any]]:
    """Per-rank answers of ``collective_step`` whose busbw is about ``busbw[group]``."""
    answers: dict[int, dict[str, Any]] = {}
    for index, members in enumerate(groups):
        factor = COLLECTIVES[op].busbw_factor(len(members))
        base = size * factor / (busbw[index] * 1e9) * 1e6
        for rank in members:
            answers[rank] = {
                "size_bytes": size,
                "count": size // 4,
                "modes": {
                    mode: {
                        "iter_us": [base * (1 + rng.uniform(-0.02, 0.02)) for _ in range(4)],
                        "wrong": 0,
                    }
                    for mode in ("out_of_place", "in_place")
                },
            }
    return [answers[r] for r in sorted(answers)]


def suite_doc(
    nodes: int = 4,
    per_node: int = 2,
    gpu: str = "h200",
    slow_node: int | None = None,
    slow: float = 0.5,
    seed: int = 0,
    scale: float = 1.0,
    cluster: str = "alpha",
    provider: str = "prov-a",
    nonce: str | None = None,
    started: float = STARTED,
    slow_rail: int | None = None,
) -> dict[str, Any]:
    """A suite results document as ``gosok bench suite=...`` writes it (unsealed); on a GPU
    type with more than one GPU per node, with the rails measured (``slow_rail`` at half)."""
    rng = random.Random(seed)
    spec, contract = gpu_spec(gpu), load_contract("auto", gpu)
    # gosok's own quick suite, as it runs on this GPU type: what an auditor's reference is.
    suite = reference_suite("quick", gpu)
    world = nodes * per_node

    def speed(node: int) -> float:
        return scale * (slow if node == slow_node else 1.0)

    targets = {
        "bf16": 0.78 * (spec.bf16_tflops or 1),
        "fp8": 0.72 * (spec.fp8_tflops or 1),
        "hbm": 0.9 * 1000 * (spec.hbm_tbps or 1),
    }
    ranks = []
    for rank in range(world):
        node = rank // per_node
        row: dict[str, Any] = {
            "rank": rank,
            "node_rank": node,
            "local_rank": rank % per_node,
            "device": f"cuda:{rank % per_node}",
            "gemm": {},
            "hbm": None,
        }
        for figure, entry, backend, shape in compute_kernels(suite.compute):
            kernel = KERNELS[entry]
            if kernel.kind == "gemm":
                work = kernel.flops_for(shape.m, shape.n, shape.k) / 1e12
            else:
                work = kernel.bytes_for(shape.n_bytes) / 1e9
            base_us = work / (targets[figure] * speed(node)) * 1e6
            step = _step(entry, backend, shape, rank, per_node, _samples(rng, base_us))
            if figure == "hbm":
                row["hbm"] = {
                    "kind": "triad",
                    "bytes_per_call": step["bytes"],
                    "buffer_bytes": shape.n_bytes,
                    "gbps": step["gbps"],
                    "step": step,
                }
            else:
                row["gemm"][figure] = {
                    "m": shape.m,
                    "n": shape.n,
                    "k": shape.k,
                    "backend": backend,
                    "tflops": step["tflops"],
                    "step": step,
                }
        ranks.append(row)

    def sweep(settings: Any, groups: list[list[int]], busbw: dict[int, float]) -> list[dict]:
        bench = CollectivesBenchConfig(ops=list(settings.ops), dtypes=[settings.dtype])
        records = []
        for repeat in range(settings.repeats):
            for size in sweep_sizes(settings.min_bytes, settings.max_bytes, settings.step_factor):
                op = settings.ops[0]
                answers = _collective_answers(op, size, groups, busbw, rng)
                for record in step_records(op, settings.dtype, bench, groups, answers):
                    records.append({**record, "repeat": repeat})
        return records

    intra_groups = [list(range(n * per_node, (n + 1) * per_node)) for n in range(nodes)]
    intra_target = 0.8 * (spec.nvlink_gbps or 2) / 2
    intra_records = sweep(
        suite.intra_node, intra_groups, {n: intra_target * speed(n) for n in range(nodes)}
    )
    op = suite.intra_node.ops[0]
    inter_groups = [list(range(world))]
    inter_records = sweep(suite.inter_node, inter_groups, {0: 360.0 * scale})
    inventory = [
        {
            "node_rank": n,
            "hostname": f"gpu-{n:03d}",
            "local_world_size": per_node,
            "torch": "2.13.0",
            "cuda": "13.0",
            "gpu_details": [
                {
                    "index": i,
                    "name": f"NVIDIA {spec.device_name_match[0]}" if spec.device_name_match else "",
                    "memory_bytes": int((spec.hbm_gb or 80) * 1e9),
                    "ecc_uncorrected": 0,
                    "temperature_c": 60,
                }
                for i in range(per_node)
            ],
            "xid_errors": 0,
        }
        for n in range(nodes)
    ]
    phases: dict[str, Any] = {
        "placement": {"ranks": []},
        "inventory": {"nodes": inventory},
        "compute": {"settings": OmegaConf.to_container(suite.compute), "ranks": ranks},
        "intra_node": {
            "records": intra_records,
            "per_node": [
                {"node_rank": i, **key_figure(intra_records, i, op)} for i in range(nodes)
            ],
            "groups": intra_groups,
        },
        "inter_node": {
            "records": inter_records,
            "groups": inter_groups,
            "nodes": nodes,
            "ranks": world,
            **key_figure(inter_records, 0, op),
        },
    }
    if suite.inter_node.rails and per_node > 1 and nodes > 1:
        rails = split_groups(world, f"mod:{per_node}")
        speeds = {i: 50.0 * scale * (0.5 if i == slow_rail else 1.0) for i in range(per_node)}
        rail_records = sweep(suite.inter_node, rails, speeds)
        phases["inter_node"]["rails"] = {
            "records": rail_records, "groups": rails,
            **rail_figures(rail_records, op, len(rails)),
        }  # fmt: skip
    drift_keys = list(suite.inventory.drift_keys)
    due, reasons = isolation_due(
        evaluate_phases(phases, spec, contract, per_node, drift_keys), "on_failure"
    )
    if due:

        def measure(groups: list[list[int]]) -> list[float]:
            return [100.0 * min(speed(n) for n in g) * (1 + rng.uniform(-0.01, 0.01))
                    for g in groups]  # fmt: skip

        outcome = isolate(
            nodes,
            measure,
            group_size=suite.isolation.group_size,
            slow_below=contract.isolation_slow_below,
            exhaustive_below=suite.isolation.exhaustive_below,
        )
        phases["isolation"] = {"triggered": True, "reasons": reasons, "outcome": outcome.to_dict()}
    else:
        phases["isolation"] = {"triggered": False, "reasons": reasons}
    labels = [
        {
            "node_rank": n,
            "node_id": f"{n:04x}" * 14,
            "ip": f"10.0.0.{n}",
            "hostname": f"gpu-{n:03d}",
        }
        for n in range(nodes)
    ]
    doc = _base(
        "suite",
        _cluster(cluster, provider, gpu, nodes, per_node),
        {"suite": OmegaConf.to_container(suite)},
        nonce,
    )
    doc["started_unix"] = started
    doc.update(
        {
            "suite": {"name": "quick", "description": "", "phases": list(suite.phases)},
            "gpu": asdict(spec),
            "contract": asdict(contract),
            "nodes": labels,
            "phases": phases,
            "timing_seconds": {"setup": 1.0},
            **judge(phases, labels, spec, contract, per_node, drift_keys),
        }
    )
    return doc


def gemm_doc(
    nodes: int = 2,
    per_node: int = 2,
    gpu: str = "h100_sxm",
    seed: int = 0,
    nonce: str | None = None,
) -> dict[str, Any]:
    """A ``bench=gemm`` results document (unsealed)."""
    rng = random.Random(seed)
    bench = OmegaConf.structured(
        GemmBenchConfig(
            entries=["gemm_bf16", "gemm_fp8_tensorwise", "hbm_triad"],
            backends={"bf16": ["torch"], "fp8": ["reference"], "hbm": ["torch"]},
            profile="cpu",
            cpu=ComputeProfile(squares=[256], transformer=[], tokens=[], hbm_bytes=1 << 20),
        )
    )
    spec = gpu_spec(gpu)
    profile = resolved_profile(bench, gpu)
    records = []
    for entry, backend, shape in measurement_plan(bench, profile):
        kernel = KERNELS[entry]
        for rank in range(nodes * per_node):
            base = 40.0 if kernel.kind == "gemm" else 5.0
            record = _step(entry, backend, shape, rank, per_node, _samples(rng, base))
            records.append(annotate(record, spec, bench.min_pct_of_peak))
    passed, problems = gemm_verdict(records)
    doc = _base(
        "gemm",
        _cluster("gemm-cluster", "prov-g", gpu, nodes, per_node),
        {"bench": OmegaConf.to_container(bench)},
        nonce,
    )
    doc.update(
        {
            "timing": {"method": "synthetic"},
            "profile": "cpu",
            "peak": peak_info(gpu),
            "records": records,
            "summary": {"per_entry": summarize(records), "passed": passed, "problems": problems},
        }
    )
    return doc


def collectives_doc(
    nodes: int = 2, per_node: int = 2, seed: int = 0, nonce: str | None = None
) -> dict[str, Any]:
    """A ``bench=collectives`` results document (unsealed)."""
    rng = random.Random(seed)
    bench = OmegaConf.structured(
        CollectivesBenchConfig(
            ops=["all_reduce", "all_gather"], min_bytes=1 << 16, max_bytes=1 << 20, step_factor=4
        )
    )
    groups = [list(range(nodes * per_node))]
    records = []
    for op in bench.ops:
        for size in sweep_sizes(bench.min_bytes, bench.max_bytes, bench.step_factor):
            answers = _collective_answers(op, size, groups, {0: 20.0}, rng)
            records += step_records(op, "float32", bench, groups, answers)
    passed, problems = collectives_verdict(records, bench.min_busbw_gbps)
    doc = _base(
        "collectives",
        _cluster("coll-cluster", "prov-c", "h100_sxm", nodes, per_node),
        {"bench": OmegaConf.to_container(bench)},
        nonce,
    )
    doc.update(
        {
            "timing": {"method": "synthetic"},
            "records": records,
            "summary": {
                "avg_busbw_gbps": averages_by_op(records),
                "passed": passed,
                "problems": problems,
            },
        }
    )
    return doc


def save(path: Path, doc: dict[str, Any], key: Path | None = None) -> dict[str, Any]:
    """Sign with ``key`` (if given), seal and write ``doc``; returns it as read back."""
    write_results(path, sign_doc(doc, key) if key else doc)
    return json.loads(path.read_text())


def edit(path: Path, change: Any, reseal: bool = True) -> dict[str, Any]:
    """Apply ``change(doc)`` to the file at ``path``; re-seal like a forger with gosok would."""
    doc = json.loads(path.read_text())
    change(doc)
    if reseal:
        write_results(path, {k: v for k, v in doc.items() if k != "sha256"})
    else:
        path.write_text(json.dumps(doc, indent=1))
    return json.loads(path.read_text())
