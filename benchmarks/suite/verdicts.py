"""Thresholds and verdicts: PASS / WARN / FAIL per check, per node and for the cluster.

Pure functions (no Ray, no torch): every check line carries the measured value, the
expectation and the rule that judged it, so a reader never has to guess why a node failed.

Rules:
- floor (``Expectation``): FAIL below ``fraction_of_spec x spec`` (or ``absolute``), WARN
  within ``warn_margin`` above that floor; INFO when neither a spec nor a floor applies.
- outlier (``OutlierRule``, SuperBench's variance rule): FAIL below
  ``(1 - fail_below_median) x median`` of the same metric across the cluster, WARN below
  ``(1 - warn_below_median) x median``.
- equality (inventory): expected vs found; drift between nodes is a WARN.

Use::

    checks = floor_checks(...) + outlier_checks(...)
    cluster = cluster_verdict(checks); per_node = node_verdicts(checks, n_nodes)
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"
SEVERITY = {INFO: 0, PASS: 1, WARN: 2, FAIL: 3}
EXIT_CODES = {PASS: 0, INFO: 0, WARN: 0, FAIL: 1}

UNITS = {
    "gemm_fp8_tflops": "TFLOPS",
    "gemm_bf16_tflops": "TFLOPS",
    "hbm_gbps": "GB/s",
    "intra_node_busbw_gbps": "GB/s",
    "inter_node_busbw_gbps": "GB/s",
}


@dataclass(frozen=True)
class Check:
    """One judged line of the report."""

    phase: str
    name: str
    scope: str  # gpu | node | cluster
    subject: str  # "cluster", "node 3", "node 3 gpu 1"
    node_rank: int | None
    rank: int | None
    value: float | str | None
    unit: str
    expectation: str
    rule: str
    status: str
    detail: str = ""

    def line(self) -> str:
        value = _fmt(self.value)
        unit = f" {self.unit}" if self.unit and isinstance(self.value, (int, float)) else ""
        text = (
            f"{self.status:4s} {self.subject:<16s} {self.phase}.{self.name}: {value}{unit}"
            f"  expected {self.expectation}  [{self.rule}]"
        )
        return f"{text}  {self.detail}" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_from_dict(data: dict[str, Any]) -> Check:
    return Check(**data)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return f"{value:.3e}"
    return str(value)


def worst(statuses: Iterable[str]) -> str:
    result = INFO
    for status in statuses:
        if SEVERITY[status] > SEVERITY[result]:
            result = status
    return PASS if result == INFO else result


def nic_node_gbps(nics: str) -> float | None:
    """Per-node NIC rate in GB/s from a catalogue string like '8x400G NDR' (8 x 400 Gb/s)."""
    match = re.match(r"\s*(\d+)\s*x\s*(\d+)\s*G", nics or "")
    if not match or "per GPU" in nics:
        return None
    return int(match.group(1)) * int(match.group(2)) / 8.0


def spec_value(metric: str, gpu: Any) -> tuple[float | None, str]:
    """Catalogue figure a metric is judged against, and how it was derived."""
    if metric == "gemm_fp8_tflops":
        return gpu.fp8_tflops, "dense FP8 spec"
    if metric == "gemm_bf16_tflops":
        return gpu.bf16_tflops, "dense BF16 spec"
    if metric == "hbm_gbps":
        return (gpu.hbm_tbps * 1000.0 if gpu.hbm_tbps else None), "HBM spec"
    if metric == "intra_node_busbw_gbps":
        # NVLink per GPU is quoted bidirectional; bus bandwidth is one direction.
        return (gpu.nvlink_gbps / 2.0 if gpu.nvlink_gbps else None), "NVLink per GPU, one way"
    if metric == "inter_node_busbw_gbps":
        return nic_node_gbps(gpu.nics), f"node NICs {gpu.nics}"
    raise KeyError(f"unknown metric {metric!r}")


def resolve_expectations(contract: Any, gpu_key: str) -> dict[str, Any]:
    """The contract's floors for one GPU type: general ones, replaced per GPU type."""
    merged = dict(contract.expectations)
    merged.update(contract.gpu_expectations.get(gpu_key, {}))
    return merged


def outlier_rule(contract: Any, metric: str) -> Any:
    """The outlier rule for one metric: its own if the contract has one, else the general."""
    return contract.metric_outliers.get(metric, contract.outlier)


def floor_check(
    phase: str,
    metric: str,
    value: float,
    expectation: Any | None,
    gpu: Any,
    subject: str,
    scope: str,
    node_rank: int | None = None,
    rank: int | None = None,
    detail: str = "",
) -> Check:
    """Judge one measured value against its contracted floor."""
    unit = UNITS[metric]
    spec, basis = spec_value(metric, gpu)
    floor, expectation_text, rule = None, "no floor", "floor: none set"
    if expectation is not None:
        if expectation.fraction_of_spec is not None and spec:
            floor = expectation.fraction_of_spec * spec
            expectation_text = (
                f">= {_fmt(floor)} {unit} ({expectation.fraction_of_spec:.2f} x {basis} "
                f"{_fmt(spec)})"
            )
            rule = "fraction of spec"
        elif expectation.absolute is not None:
            floor = expectation.absolute
            expectation_text = f">= {_fmt(floor)} {unit} (absolute)"
            rule = "absolute floor"
        elif expectation.fraction_of_spec is not None:
            rule = f"fraction of spec: catalogue has no {basis} for {gpu.key}"
    if floor is None:
        status = INFO
    else:
        if value < floor:
            status = FAIL
        elif value < floor * (1.0 + expectation.warn_margin):
            status = WARN
        else:
            status = PASS
        rule += f", WARN within +{expectation.warn_margin:.0%}"
    return Check(
        phase, metric, scope, subject, node_rank, rank, value, unit, expectation_text, rule,
        status, detail,
    )  # fmt: skip


def outlier_checks(
    phase: str,
    metric: str,
    values: list[tuple[str, int | None, int | None, float]],
    rule: Any,
    scope: str,
) -> list[Check]:
    """Each (subject, node_rank, rank, value) against the median of all of them."""
    if len(values) < 3:
        # With two values the median is their mean: no majority to call either an outlier.
        return []
    median = statistics.median(v for *_, v in values)
    unit = UNITS[metric]
    fail_line = (1.0 - rule.fail_below_median) * median
    warn_line = (1.0 - rule.warn_below_median) * median
    checks = []
    for subject, node_rank, rank, value in values:
        ratio = value / median if median > 0 else 1.0
        if value < fail_line:
            status = FAIL
        elif value < warn_line:
            status = WARN
        else:
            status = PASS
        checks.append(
            Check(
                phase,
                f"{metric}.outlier",
                scope,
                subject,
                node_rank,
                rank,
                value,
                unit,
                f">= {_fmt(fail_line)} {unit} (FAIL), >= {_fmt(warn_line)} (WARN)",
                f"outlier: -{rule.fail_below_median:.0%} / -{rule.warn_below_median:.0%} vs "
                f"cluster median {_fmt(median)} over {len(values)}",
                status,
                f"{ratio - 1.0:+.1%} vs median",
            )
        )
    return checks


def equality_check(
    phase: str,
    name: str,
    subject: str,
    node_rank: int | None,
    found: Any,
    expected: Any,
    status_if_different: str = FAIL,
) -> Check:
    status = PASS if found == expected else status_if_different
    return Check(
        phase,
        name,
        "node",
        subject,
        node_rank,
        None,
        str(found),
        "",
        f"== {expected}",
        "expected vs found",
        status,
    )


def drift_checks(phase: str, per_node: dict[int, dict[str, Any]], keys: list[str]) -> list[Check]:
    """Version drift: every node should report the same value for each key (WARN if not).
    Nodes in the minority are named; the majority value is the expectation."""
    checks = []
    for key in keys:
        values = {node: str(facts.get(key)) for node, facts in per_node.items()}
        counts: dict[str, int] = {}
        for value in values.values():
            counts[value] = counts.get(value, 0) + 1
        majority = max(counts, key=lambda v: counts[v])
        if len(counts) == 1:
            checks.append(
                Check(
                    phase,
                    f"drift.{key}",
                    "cluster",
                    "cluster",
                    None,
                    None,
                    majority,
                    "",
                    "same on every node",
                    "version drift",
                    PASS,
                    f"{len(values)} node(s) agree",
                )
            )
            continue
        for node, value in sorted(values.items()):
            if value != majority:
                checks.append(
                    Check(
                        phase,
                        f"drift.{key}",
                        "node",
                        f"node {node}",
                        node,
                        None,
                        value,
                        "",
                        f"== {majority} (majority)",
                        "version drift",
                        WARN,
                    )
                )
    return checks


def max_check(
    phase: str,
    name: str,
    subject: str,
    node_rank: int | None,
    value: float,
    limit: float,
    unit: str,
    status_if_over: str,
    rule: str,
) -> Check:
    status = status_if_over if value > limit else PASS
    return Check(
        phase, name, "node", subject, node_rank, None, value, unit, f"<= {limit}", rule, status
    )


def node_verdicts(checks: list[Check], n_nodes: int) -> dict[int, str]:
    """Worst status of every check that concerns a node (its GPUs included)."""
    per_node: dict[int, list[str]] = {n: [] for n in range(n_nodes)}
    for check in checks:
        if check.node_rank is not None and check.node_rank in per_node:
            per_node[check.node_rank].append(check.status)
    return {n: worst(statuses) for n, statuses in per_node.items()}


def cluster_verdict(checks: list[Check]) -> str:
    return worst(c.status for c in checks)


def failing_nodes(checks: list[Check], n_nodes: int) -> list[int]:
    return [n for n, status in node_verdicts(checks, n_nodes).items() if status == FAIL]


def exit_code(verdict: str) -> int:
    return EXIT_CODES[verdict]
