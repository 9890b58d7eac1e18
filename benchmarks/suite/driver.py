"""``gosok bench suite=quick|acceptance|audit``: the acceptance suite on a Ray cluster.

Phases run in the order ``suite.phases`` lists them, on one set of ranks:
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

import time
from dataclasses import asdict
from typing import Any

from rich.console import Console

from gosok.benchmarks.core.harness import bench_session, run_dir, write_run_results
from gosok.benchmarks.core.registry import Benchmark
from gosok.benchmarks.suite.derive import (
    isolation_due,
    judge,
    rederive_suite,
    reference_suite_problems,
)
from gosok.benchmarks.suite.phases import PHASES, PhaseContext, evaluate_phases, suite_plan
from gosok.benchmarks.suite.ranks import prepare_rank
from gosok.benchmarks.suite.schema import effective_suite, load_contract, validate_suite
from gosok.launcher.config.catalogue import gpu_spec
from gosok.launcher.results.journal import note


def _node_labels(plan: Any) -> list[dict[str, Any]]:
    return [
        {"node_rank": i, "node_id": n.node_id, "ip": n.ip, "hostname": n.hostname}
        for i, n in enumerate(plan.nodes)
    ]


def validate(cfg: Any) -> list[str]:
    """Every phase setting and the contract, before anything starts."""
    from gosok.launcher.errors import ConfigError

    problems = validate_suite(cfg.suite)  # as given, before any cpu_overrides replace it
    try:
        suite = effective_suite(cfg.suite, cfg.cluster.gpu)
    except ConfigError as err:
        return problems + list(err.problems)
    problems += [p for p in validate_suite(suite) if p not in problems]
    if not problems:
        try:
            load_contract(suite.contract, cfg.cluster.gpu)
        except ConfigError as err:
            problems += list(err.problems)
    return problems


def plan_lines(cfg: Any) -> list[str]:
    """The suite's plan and wall-time estimate (pure): what ``dry_run=true`` prints."""
    suite = effective_suite(cfg.suite, cfg.cluster.gpu)
    gpu = gpu_spec(cfg.cluster.gpu)
    contract = load_contract(suite.contract, cfg.cluster.gpu)
    plan = suite_plan(suite, cfg.cluster, gpu)
    lines = [
        f"suite {plan['suite']} on {plan['cluster']}: {plan['nodes']} nodes x "
        f"{plan['gpus_per_node']} {gpu.name}; contract {contract.name}"
    ]
    for phase in plan["phases"]:
        lines.append(
            f"  {phase['phase']:<11s} {phase['seconds']:9.1f} s  {phase['concurrency']}"
            f"  (grows with nodes: {phase['grows_with_nodes']})"
            + (f"  {phase['note']}" if phase["note"] else "")
        )
    lines.append(
        f"estimated wall time: {plan['estimate_seconds']:.0f} s "
        f"({plan['estimate_seconds_with_isolation']:.0f} s if isolation runs)"
    )
    return lines


def run_suite(cfg: Any, console: Console) -> int:
    suite = effective_suite(cfg.suite, cfg.cluster.gpu)
    gpu = gpu_spec(cfg.cluster.gpu)
    contract = load_contract(suite.contract, cfg.cluster.gpu)
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
        ctx = PhaseContext(group, console, contract, cfg.seed, gpu=gpu)
        for name in suite.phases:
            if PHASES[name].after_checks:
                continue
            start = time.perf_counter()
            console.print(f"[bold]phase {name}[/]")
            phases[name] = PHASES[name].run(ctx, suite[name])
            timings[name] = time.perf_counter() - start
            note("suite", {"phase": name, "result": phases[name]})
        drift_keys = list(suite.inventory.drift_keys)
        checks = evaluate_phases(phases, gpu, contract, cfg.cluster.gpus_per_node, drift_keys)
        for name in suite.phases:
            if not PHASES[name].after_checks:
                continue
            due, reasons = isolation_due(checks, suite[name].trigger)
            if due:
                start = time.perf_counter()
                console.print(f"[bold]phase {name}[/]")
                ctx.reasons = reasons
                phases[name] = PHASES[name].run(ctx, suite[name])
                timings[name] = time.perf_counter() - start
            else:
                phases[name] = {"triggered": False, "reasons": reasons}
        labels = _node_labels(group.plan)
        judged = judge(phases, labels, gpu, contract, cfg.cluster.gpus_per_node, drift_keys)
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
            **judged,
            "plan_estimate": suite_plan(suite, cfg.cluster, gpu),
        }
        path = write_run_results("suite", cfg, session, payload)
    from gosok.benchmarks.collectives.nccl_tests import write_documents
    from gosok.benchmarks.suite.report import print_summary, write_reports
    from gosok.launcher.results.store import load_results

    doc = load_results(path)
    written = write_reports(doc, run_dir())
    collective = [n for n in ("intra_node", "inter_node") if n in doc["phases"]]
    written += write_documents(
        run_dir(), doc, [(n, doc["phases"][n]["records"], suite[n], 0) for n in collective]
    )
    print_summary(doc, console)
    console.print(f"results: {path}", highlight=False)
    for item in written:
        console.print(f"report: {item}", highlight=False)
    return int(judged["verdict"]["exit_code"])


def render(doc: dict[str, Any], args: Any) -> int:
    from gosok.benchmarks.suite.report import render_suite

    return render_suite(doc, args)


def compare(a: dict[str, Any], b: dict[str, Any], args: Any) -> int:
    from gosok.benchmarks.suite.report import compare_suite

    return compare_suite(a, b, args)


BENCHMARK = Benchmark(
    name="suite",
    kind="suite",
    summary="acceptance suite: inventory, compute, collectives, isolation, verdicts",
    validate=validate,
    plan=plan_lines,
    run=run_suite,
    render=render,
    compare=compare,
    rederive=rederive_suite,
    reference=reference_suite_problems,
)
