"""A suite's judgement from its measurements, in one place.

The run calls ``judge`` once its phases are done; every re-derivation of a results file
(``gosok report``, ``verify``, ``compare``, ``audit``) calls the same function on the phases
the file holds, and compares. ``isolation_due`` is the one rule for whether the isolation
phase runs (the run decides with it; a re-derivation checks the file's decision with it).

Use: ``due, reasons = isolation_due(checks, suite.isolation.trigger)``;
``judge(phases, labels, gpu, contract, gpus_per_node, drift_keys)``.
"""

from __future__ import annotations

from typing import Any

from gosok.benchmarks.suite.capacity import capacity
from gosok.benchmarks.suite.evaluate import confirmed_ranks, isolation_checks, isolation_reasons
from gosok.benchmarks.suite.phases import evaluate_phases
from gosok.benchmarks.suite.verdicts import (
    Check,
    cluster_verdict,
    exit_code,
    failing_nodes,
    node_verdicts,
)


def isolation_due(checks: list[Check], trigger: str) -> tuple[bool, list[str]]:
    """Whether isolation runs after these checks (``trigger``: always, on_failure, never),
    and the checks that call for it."""
    reasons = isolation_reasons(checks)
    return trigger == "always" or (trigger == "on_failure" and bool(reasons)), reasons


def judge(
    phases: dict[str, Any],
    labels: list[dict[str, Any]],
    gpu: Any,
    contract: Any,
    gpus_per_node: int,
    drift_keys: list[str],
) -> dict[str, Any]:
    """Every check (isolation's too, when it ran), the node and cluster verdicts and the
    capacity, from the measured ``phases``: the ``checks``, ``verdict`` and ``capacity``
    sections of a suite results file."""
    checks = evaluate_phases(phases, gpu, contract, gpus_per_node, drift_keys)
    isolation = phases.get("isolation") or {}
    if isolation.get("triggered"):
        checks += isolation_checks(isolation)
    n_nodes = len(labels)
    verdict = cluster_verdict(checks)
    fp8 = [
        row["gemm"]["fp8"]["tflops"]
        for row in (confirmed_ranks(phases["compute"]) if "compute" in phases else [])
        if "fp8" in row["gemm"]
    ]
    return {
        "checks": [c.to_dict() for c in checks],
        "verdict": {
            "cluster": verdict,
            "nodes": {str(n): s for n, s in node_verdicts(checks, n_nodes).items()},
            "failing_nodes": [labels[n] for n in failing_nodes(checks, n_nodes)],
            "exit_code": exit_code(verdict),
        },
        "capacity": capacity(gpu, n_nodes * gpus_per_node, fp8, contract.b200_expected_fp8_tflops),
    }
