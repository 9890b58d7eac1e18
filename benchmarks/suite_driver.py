"""``gosok bench suite=quick|acceptance|audit``: the acceptance suite on a Ray cluster.

Phases run in the order ``suite.phases`` lists them, on one set of rank actors:
inventory (every node at once), compute (GEMM and HBM on every GPU at once), intra-node
collectives (every node at once), inter-node collectives (the whole allocation), then
isolation when a check failed or a node is an outlier (bisection over node groups, see
``isolation``). The measurements, every check with its verdict, the capacity in
B200-equivalents and the plan estimate go into one sealed ``results.json``; the terminal
summary, ``report.md``, ``report.html`` and the PNG plots are derived from that file.
Exit code: 0 when the cluster verdict is PASS or WARN, 1 on FAIL.

Run: ``gosok bench suite=quick``; ``gosok bench suite=acceptance cluster=nhn_b200_510
dry_run=true`` prints the plan and the wall-time estimate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

from rich.console import Console

from gosok.benchmarks import collectives  # noqa: F401  (registers the collective entries)
from gosok.benchmarks.capacity import capacity
from gosok.benchmarks.collectives_driver import measure_collectives
from gosok.benchmarks.harness import bench_session, run_dir, write_run_results
from gosok.benchmarks.isolation import isolate
from gosok.benchmarks.registry import bench_driver
from gosok.benchmarks.suite_evaluate import (
    evaluate_phases,
    isolation_checks,
    isolation_reasons,
    key_figure,
)
from gosok.benchmarks.suite_plan import suite_plan
from gosok.benchmarks.suite_ranks import compute_rank, inventory_rank, prepare_rank
from gosok.benchmarks.suite_schema import effective_suite, load_contract, validate_suite
from gosok.benchmarks.verdicts import (
    Check,
    cluster_verdict,
    exit_code,
    failing_nodes,
    node_verdicts,
)
from gosok.launcher.catalogue import gpu_spec
from gosok.launcher.plan import node_subset_groups, rank_groups
from gosok.launcher.schema import CollectivesBenchConfig
from gosok.launcher.validate import raise_if, validate_cluster

SUITE_NAMES = ("quick", "acceptance", "audit")


def _sweep_config(phase: Any, scope: str) -> CollectivesBenchConfig:
    return CollectivesBenchConfig(
        ops=list(phase.ops),
        dtypes=[phase.dtype],
        min_bytes=phase.min_bytes,
        max_bytes=phase.max_bytes,
        step_factor=phase.step_factor,
        warmup_iters=phase.warmup_iters,
        iters=phase.iters,
        check=True,
        scope=scope,
        timeout_s=phase.timeout_s,
    )


def _repeated_sweep(
    group: Any, phase: Any, groups: list[list[int]], console: Console, scope: str
) -> list[dict[str, Any]]:
    records = []
    bench = _sweep_config(phase, scope)
    for repeat in range(phase.repeats):
        # Correctness once; later repeats only time.
        bench.check = repeat == 0
        for record in measure_collectives(group, bench, console, groups=groups):
            records.append({**record, "repeat": repeat})
    return records


def run_inventory(group: Any) -> dict[str, Any]:
    nodes = [n for n in group.run(inventory_rank) if n is not None]
    return {"nodes": sorted(nodes, key=lambda n: n["node_rank"])}


def run_compute(group: Any, cfg: Any) -> dict[str, Any]:
    settings = {
        "gemm_dtypes": list(cfg.gemm_dtypes),
        "gemm_size": cfg.gemm_size,
        "fp8_recipe": cfg.fp8_recipe,
        "fp8_backend": cfg.fp8_backend,
        "hbm": cfg.hbm,
        "hbm_bytes": cfg.hbm_bytes,
        "warmup_iters": cfg.warmup_iters,
        "iters": cfg.iters,
        "repeats": cfg.repeats,
        "min_repeat_s": cfg.min_repeat_s,
        "cpu_threads": cfg.cpu_threads,
    }
    ranks = group.run(compute_rank, settings, timeout_s=cfg.timeout_s)
    return {"settings": settings, "ranks": ranks}


def run_intra_node(group: Any, cfg: Any, console: Console) -> dict[str, Any]:
    groups = rank_groups(group.plan, "intra_node")
    records = _repeated_sweep(group, cfg, groups, console, "intra_node")
    per_node = [
        {"node_rank": index, **key_figure(records, index, cfg.ops[0])}
        for index in range(len(groups))
    ]
    return {"records": records, "per_node": per_node, "groups": groups}


def run_inter_node(group: Any, cfg: Any, console: Console) -> dict[str, Any]:
    groups = rank_groups(group.plan, cfg.scope)
    records = _repeated_sweep(group, cfg, groups, console, cfg.scope)
    return {
        "records": records,
        "groups": groups,
        "nodes": len(group.plan.nodes),
        "ranks": len(groups[0]),
        **key_figure(records, 0, cfg.ops[0]),
    }


def isolation_measure(group: Any, cfg: Any, quiet: Console):
    """``measure(node_groups) -> busbw per group`` for ``isolate``: all groups at once."""
    plan = group.plan
    bench = CollectivesBenchConfig(
        ops=[cfg.op],
        dtypes=[cfg.dtype],
        min_bytes=cfg.size_bytes,
        max_bytes=cfg.size_bytes,
        step_factor=2,
        warmup_iters=cfg.warmup_iters,
        iters=cfg.iters,
        check=False,
        timeout_s=cfg.timeout_s,
    )

    def measure(node_groups: list[list[int]]) -> list[float]:
        groups = node_subset_groups(plan, node_groups)
        if cfg.ranks == "local0":
            groups = [[r for r in g if plan.ranks[r].local_rank == 0] for g in groups]
        samples: list[list[float]] = [[] for _ in groups]
        for _ in range(cfg.repeats):
            for record in measure_collectives(group, bench, quiet, groups=groups):
                samples[record["group"]].append(record["busbw_gbps"])
        return [statistics.median(s) for s in samples]

    return measure


def run_isolation(
    group: Any, cfg: Any, contract: Any, reasons: list[str], console: Console
) -> dict[str, Any]:
    n_nodes = len(group.plan.nodes)
    console.print(
        f"isolation: {len(reasons)} reason(s), e.g. {reasons[0] if reasons else 'forced'}",
        highlight=False,
    )
    log: list[str] = []
    inner = isolation_measure(group, cfg, Console(quiet=True))

    def measure(node_groups: list[list[int]]) -> list[float]:
        values = inner(node_groups)
        shown = ", ".join(f"{g}:{v:.4g}" for g, v in zip(node_groups, values, strict=True))
        line = f"  round {len(log) + 1}: {len(node_groups)} group(s) {shown}"
        log.append(line)
        console.print(line[:400], highlight=False, markup=False)
        return values

    outcome = isolate(
        n_nodes,
        measure,
        group_size=cfg.group_size,
        slow_below=contract.isolation_slow_below,
        exhaustive_below=cfg.exhaustive_below,
    )
    return {"triggered": True, "reasons": reasons, "outcome": outcome.to_dict()}


def _node_labels(plan: Any) -> list[dict[str, Any]]:
    return [
        {"node_rank": i, "node_id": n.node_id, "ip": n.ip, "hostname": n.hostname}
        for i, n in enumerate(plan.nodes)
    ]


def print_dry_run(cfg: Any, suite: Any, gpu: Any, contract: Any, console: Console) -> None:
    plan = suite_plan(suite, cfg.cluster, gpu)
    console.print(
        f"suite {plan['suite']} on {plan['cluster']}: {plan['nodes']} nodes x "
        f"{plan['gpus_per_node']} {gpu.name}; contract {contract.name}",
        highlight=False,
    )
    for phase in plan["phases"]:
        console.print(
            f"  {phase['phase']:<11s} {phase['seconds']:9.1f} s  {phase['concurrency']}"
            f"  (grows with nodes: {phase['grows_with_nodes']})"
            + (f"  {phase['note']}" if phase["note"] else ""),
            highlight=False,
        )
    console.print(
        f"estimated wall time: {plan['estimate_seconds']:.0f} s "
        f"({plan['estimate_seconds_with_isolation']:.0f} s if isolation runs)",
        highlight=False,
    )


def run_suite(cfg: Any, console: Console) -> int:
    raise_if(validate_cluster(cfg.cluster))
    suite = effective_suite(cfg.suite, cfg.cluster.gpu)
    raise_if(validate_suite(suite))
    gpu = gpu_spec(cfg.cluster.gpu)
    contract = load_contract(suite.contract, cfg.cluster.gpu)
    if cfg.dry_run:
        print_dry_run(cfg, suite, gpu, contract, console)
        return 0
    timeout = max(cfg.collective_timeout_s, suite.compute.timeout_s, suite.inter_node.timeout_s)
    timings: dict[str, float] = {}
    phases: dict[str, Any] = {}
    begin = time.perf_counter()
    with bench_session(cfg, timeout) as session:
        group = session.group
        phases["placement"] = {"ranks": group.run(prepare_rank, suite.compute.cpu_threads)}
        timings["setup"] = time.perf_counter() - begin
        console.print(
            f"suite {suite.name}: {len(group.plan.nodes)} nodes x {cfg.cluster.gpus_per_node} "
            f"ranks, phases {list(suite.phases)}, contract {contract.name}",
            highlight=False,
        )
        for name in suite.phases:
            if name == "isolation":
                continue
            start = time.perf_counter()
            console.print(f"[bold]phase {name}[/]")
            if name == "inventory":
                phases[name] = run_inventory(group)
            elif name == "compute":
                phases[name] = run_compute(group, suite.compute)
            elif name == "intra_node":
                phases[name] = run_intra_node(group, suite.intra_node, console)
            elif name == "inter_node":
                phases[name] = run_inter_node(group, suite.inter_node, console)
            timings[name] = time.perf_counter() - start
        checks: list[Check] = evaluate_phases(
            phases, gpu, contract, cfg.cluster.gpus_per_node, list(suite.inventory.drift_keys)
        )
        if "isolation" in suite.phases:
            reasons = isolation_reasons(checks)
            trigger = suite.isolation.trigger
            if trigger == "always" or (trigger == "on_failure" and reasons):
                start = time.perf_counter()
                console.print("[bold]phase isolation[/]")
                phases["isolation"] = run_isolation(
                    group, suite.isolation, contract, reasons or ["trigger=always"], console
                )
                checks += isolation_checks(phases["isolation"])
                timings["isolation"] = time.perf_counter() - start
            else:
                phases["isolation"] = {"triggered": False, "reasons": reasons}
        n_nodes = len(group.plan.nodes)
        verdict = cluster_verdict(checks)
        per_node = node_verdicts(checks, n_nodes)
        labels = _node_labels(group.plan)
        fp8 = [
            r["gemm"]["fp8"]["tflops"]
            for r in phases.get("compute", {}).get("ranks", [])
            if "fp8" in r["gemm"]
        ]
        payload = {
            "suite": {
                "name": suite.name,
                "description": suite.description,
                "phases": list(suite.phases),
            },
            "gpu": asdict(gpu),
            "contract": asdict(contract),
            "nodes": labels,
            "phases": phases,
            "timing_seconds": timings,
            "checks": [c.to_dict() for c in checks],
            "verdict": {
                "cluster": verdict,
                "nodes": {str(n): s for n, s in per_node.items()},
                "failing_nodes": [labels[n] for n in failing_nodes(checks, n_nodes)],
                "exit_code": exit_code(verdict),
            },
            "capacity": capacity(
                gpu, n_nodes * cfg.cluster.gpus_per_node, fp8, contract.b200_expected_fp8_tflops
            ),
            "plan_estimate": suite_plan(suite, cfg.cluster, gpu),
        }
        path = write_run_results("suite", cfg, session, payload)
    from gosok.benchmarks.suite_report import print_summary, write_reports
    from gosok.launcher.results import load_results

    doc = load_results(path)
    written = write_reports(doc, run_dir())
    print_summary(doc, console)
    console.print(f"results: {path}", highlight=False)
    for item in written:
        console.print(f"report: {item}", highlight=False)
    return exit_code(verdict)


for _name in SUITE_NAMES:
    bench_driver(_name)(run_suite)
