"""Judge a suite's measurements: every check, per-node and cluster verdicts, culprits.

Pure: it reads the ``phases`` section of a suite results document (what the ranks
measured) plus the GPU spec and the contract, and returns ``Check`` lines. The driver
stores them in the results file; ``gosok report`` can re-derive them from the file.

Use: one ``*_checks`` function per phase (``phases.PHASES`` wires them);
``isolation_checks(phases["isolation"])`` after isolation has run.
"""

from __future__ import annotations

import statistics
from typing import Any

from gosok.benchmarks.suite.verdicts import (
    FAIL,
    WARN,
    Check,
    drift_checks,
    equality_check,
    floor_check,
    max_check,
    outlier_checks,
    outlier_rule,
    resolve_expectations,
)


def _gpu_subject(node_rank: int, local_rank: int) -> str:
    return f"node {node_rank} gpu {local_rank}"


def inventory_checks(
    nodes: list[dict[str, Any]], gpu: Any, contract: Any, gpus_per_node: int, drift_keys: list[str]
) -> list[Check]:
    checks: list[Check] = []
    for facts in nodes:
        node = facts["node_rank"]
        subject = f"node {node}"
        if gpu.key == "cpu":
            checks.append(
                equality_check(
                    "inventory",
                    "rank_slots",
                    subject,
                    node,
                    facts.get("local_world_size"),
                    gpus_per_node,
                )
            )
            continue
        details = facts.get("gpu_details") or []
        checks.append(
            equality_check("inventory", "gpu_count", subject, node, len(details), gpus_per_node)
        )
        names = sorted({d["name"] for d in details})
        matches = bool(details) and all(
            any(m in d["name"] for m in gpu.device_name_match) for d in details
        )
        checks.append(
            Check(
                "inventory",
                "gpu_model",
                "node",
                subject,
                node,
                None,
                ", ".join(names) or "none",
                "",
                f"contains one of {gpu.device_name_match}",
                "expected vs found",
                "PASS" if matches else FAIL,
            )
        )
        if gpu.hbm_gb:
            for d in details:
                found_gb = d["memory_bytes"] / 1e9
                status = "PASS" if found_gb >= 0.9 * gpu.hbm_gb else FAIL
                checks.append(
                    Check(
                        "inventory",
                        "gpu_memory",
                        "gpu",
                        _gpu_subject(node, d["index"]),
                        node,
                        None,
                        round(found_gb, 1),
                        "GB",
                        f">= 0.9 x {gpu.hbm_gb} GB",
                        "expected vs found",
                        status,
                    )
                )
        for d in details:
            if d.get("ecc_uncorrected") is not None:
                checks.append(
                    max_check(
                        "inventory",
                        "ecc_uncorrected",
                        _gpu_subject(node, d["index"]),
                        node,
                        d["ecc_uncorrected"],
                        contract.max_ecc_uncorrected,
                        "errors",
                        FAIL,
                        "ECC uncorrected (volatile)",
                    )
                )
            if d.get("temperature_c") is not None:
                checks.append(
                    max_check(
                        "inventory",
                        "temperature",
                        _gpu_subject(node, d["index"]),
                        node,
                        d["temperature_c"],
                        contract.max_temperature_c,
                        "C",
                        WARN,
                        "temperature",
                    )
                )
        if facts.get("xid_errors") is not None:
            checks.append(
                max_check(
                    "inventory",
                    "xid_errors",
                    subject,
                    node,
                    facts["xid_errors"],
                    0,
                    "lines",
                    WARN,
                    "NVRM Xid lines in the kernel log",
                )
            )
    per_node = {f["node_rank"]: f for f in nodes}
    if len(per_node) > 1 and drift_keys:
        checks += drift_checks("inventory", per_node, drift_keys)
    return checks


def confirmed_ranks(phase: dict[str, Any]) -> list[dict[str, Any]]:
    """The compute rows a suite is judged by: with a confirm reading, each GPU's better
    reading of each figure (a low reading must repeat to count)."""
    ranks = phase["ranks"]
    confirm = phase.get("confirm")
    if not confirm:
        return ranks
    second = {row["rank"]: row for row in confirm["ranks"]}
    out = []
    for row in ranks:
        again = second.get(row["rank"])
        if again is None:
            out.append(row)
            continue
        best = {**row, "gemm": dict(row["gemm"])}
        for dtype, first in row["gemm"].items():
            other = again["gemm"].get(dtype)
            if other is not None and other["tflops"] > first["tflops"]:
                best["gemm"][dtype] = other
        if row.get("hbm") and again.get("hbm") and again["hbm"]["gbps"] > row["hbm"]["gbps"]:
            best["hbm"] = again["hbm"]
        out.append(best)
    return out


def rank_figures(row: dict[str, Any]) -> dict[str, float]:
    """One GPU's compute figures by metric name (``gemm_bf16_tflops``, ``hbm_gbps``, ...)."""
    figures = {f"gemm_{d}_tflops": g["tflops"] for d, g in row["gemm"].items()}
    if row.get("hbm"):
        figures["hbm_gbps"] = row["hbm"]["gbps"]
    return figures


def compute_checks(ranks: list[dict[str, Any]], gpu: Any, contract: Any) -> list[Check]:
    expectations = resolve_expectations(contract, gpu.key)
    checks: list[Check] = []
    series: dict[str, list[tuple[str, int | None, int | None, float]]] = {}
    for row in ranks:
        subject = _gpu_subject(row["node_rank"], row["local_rank"])
        for metric, value in rank_figures(row).items():
            checks.append(
                floor_check(
                    "compute",
                    metric,
                    value,
                    expectations.get(metric),
                    gpu,
                    subject,
                    "gpu",
                    row["node_rank"],
                    row["rank"],
                )
            )
            series.setdefault(metric, []).append((subject, row["node_rank"], row["rank"], value))
    for metric, values in series.items():
        checks += outlier_checks("compute", metric, values, outlier_rule(contract, metric), "gpu")
    return checks


def intra_node_checks(per_node: list[dict[str, Any]], gpu: Any, contract: Any) -> list[Check]:
    expectations = resolve_expectations(contract, gpu.key)
    metric = "intra_node_busbw_gbps"
    checks = [
        floor_check(
            "intra_node",
            metric,
            row["busbw_gbps"],
            expectations.get(metric),
            gpu,
            f"node {row['node_rank']}",
            "node",
            row["node_rank"],
            detail=f"{row['op']} {row['size_bytes']} B",
        )
        for row in per_node
    ]
    values = [(f"node {r['node_rank']}", r["node_rank"], None, r["busbw_gbps"]) for r in per_node]
    rule = outlier_rule(contract, metric)
    return checks + outlier_checks("intra_node", metric, values, rule, "node")


def inter_node_checks(summary: dict[str, Any], gpu: Any, contract: Any) -> list[Check]:
    expectations = resolve_expectations(contract, gpu.key)
    metric = "inter_node_busbw_gbps"
    detail = f"{summary['op']} {summary['size_bytes']} B over {summary['nodes']} nodes"
    if summary["nodes"] == 2:
        detail += " (two nodes: NCCL's Tree algorithm can read above the NIC rate)"
    return [
        floor_check(
            "inter_node",
            metric,
            summary["busbw_gbps"],
            expectations.get(metric),
            gpu,
            "cluster",
            "cluster",
            detail=detail,
        )
    ]


def rail_checks(summary: dict[str, Any], contract: Any) -> list[Check]:
    """Every rail's busbw against the median rail (the outlier rule of inter-node busbw):
    a NIC or switch port that is slow shows as its rail (three rails or more)."""
    rails = summary.get("rails")
    if not rails:
        return []
    metric = "inter_node_busbw_gbps"
    values = [(f"rail {r['rail']}", None, None, r["busbw_gbps"]) for r in rails["per_rail"]]
    return outlier_checks(
        "inter_node.rails", metric, values, outlier_rule(contract, metric), "cluster"
    )


def isolation_reasons(checks: list[Check]) -> list[str]:
    """Why isolation should run: a failed check, or a node/GPU flagged as an outlier."""
    reasons = []
    for check in checks:
        if check.status == FAIL or (check.status == WARN and check.name.endswith(".outlier")):
            reasons.append(f"{check.status} {check.subject} {check.phase}.{check.name}")
    return reasons


def isolation_checks(isolation: dict[str, Any]) -> list[Check]:
    """One FAIL line per culprit node and per bad link, with the evidence."""
    outcome = isolation.get("outcome")
    if not outcome:
        return []
    checks = []
    rounds = f"{outcome['round_count']} round(s), budget {outcome['round_budget']}"
    reference = outcome["reference"]
    line = (1 - outcome["slow_below"]) * reference
    for node in outcome["culprits"]:
        evidence = outcome["evidence"].get(str(node), [])
        checks.append(
            Check(
                "isolation",
                "culprit",
                "node",
                f"node {node}",
                node,
                None,
                min(
                    (
                        g["value"]
                        for r in outcome["rounds"]
                        for g in r
                        if g["slow"] and node in g["tested"]
                    ),
                    default=None,
                ),
                "GB/s",
                f">= {line:.4g} GB/s ({1 - outcome['slow_below']:.2f} x reference {reference:.4g})",
                f"isolation {outcome['mode']}, {rounds}",
                FAIL,
                "; ".join(evidence),
            )
        )
    for a, b in outcome["bad_links"]:
        evidence = outcome["evidence"].get(str(a), [])
        checks.append(
            Check(
                "isolation",
                "bad_link",
                "node",
                f"link {a}-{b}",
                None,
                None,
                f"{a}-{b}",
                "",
                f"pair >= {line:.4g} GB/s",
                f"isolation {outcome['mode']}, {rounds}",
                FAIL,
                "; ".join(evidence),
            )
        )
    return checks


def key_figure(records: list[dict[str, Any]], group: int, op: str) -> dict[str, Any]:
    """Median busbw over repeats at the largest measured size for one group and op."""
    mine = [r for r in records if r["group"] == group and r["op"] == op]
    size = max(r["size_bytes"] for r in mine)
    samples = [r["busbw_gbps"] for r in mine if r["size_bytes"] == size]
    return {
        "op": op,
        "size_bytes": size,
        "busbw_samples": samples,
        "busbw_gbps": statistics.median(samples),
    }
