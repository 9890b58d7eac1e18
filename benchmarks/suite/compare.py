"""What changed between two suite runs: key figures side by side, regressions flagged.

Pure: reads two suite results documents. Cluster-level figures (median GEMM and HBM per
GPU, median intra-node bus bandwidth, inter-node bus bandwidth, measured
B200-equivalents, cluster verdict, failing nodes) are always comparable, also across
providers and cluster sizes; per-node figures are compared for nodes found in both runs
(same hostname and node rank, or same Ray node id). A figure that dropped by more than
``tolerance`` is a regression; a verdict that got worse is one too.

Both documents are re-derived first (``suite.derive``): figures from their raw data,
checks and verdicts from those figures with the GPU entry and contract each file recorded.
A stored verdict is never compared.

Use: ``rows = compare_docs(a, b, tolerance=0.05)``; ``regressions(rows)``.
"""

from __future__ import annotations

import statistics
from typing import Any

from gosok.benchmarks.core.compare import (  # noqa: F401  (re-exported for suite users)
    CHANGED,
    IMPROVED,
    REGRESSION,
    SAME,
    CompareRow,
    figure_row,
    figure_rows,
    regressions,
)
from gosok.benchmarks.suite.verdicts import SEVERITY


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cluster_figures(doc: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Higher-is-better cluster figures of one run: name -> (value, unit)."""
    phases = doc.get("phases", {})
    ranks = phases.get("compute", {}).get("ranks", [])
    figures: dict[str, tuple[float | None, str]] = {}
    for dtype in ("bf16", "fp8"):
        values = [r["gemm"][dtype]["tflops"] for r in ranks if dtype in r["gemm"]]
        if values:
            figures[f"gemm_{dtype}_tflops median per GPU"] = (_median(values), "TFLOPS")
            figures[f"gemm_{dtype}_tflops min per GPU"] = (min(values), "TFLOPS")
    hbm = [r["hbm"]["gbps"] for r in ranks if r.get("hbm")]
    if hbm:
        figures["hbm_gbps median per GPU"] = (_median(hbm), "GB/s")
    intra = [n["busbw_gbps"] for n in phases.get("intra_node", {}).get("per_node", [])]
    if intra:
        figures["intra_node_busbw_gbps median per node"] = (_median(intra), "GB/s")
        figures["intra_node_busbw_gbps min per node"] = (min(intra), "GB/s")
    if "busbw_gbps" in phases.get("inter_node", {}):
        figures["inter_node_busbw_gbps"] = (phases["inter_node"]["busbw_gbps"], "GB/s")
    measured = doc.get("capacity", {}).get("measured_b200_eq")
    if measured is not None:
        figures["measured B200-equivalents"] = (measured, "B200-eq")
    return figures


def node_figures(doc: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-node figures keyed by a label that identifies the node across runs."""
    labels = {}
    for node in doc.get("nodes", []):
        labels[node["node_rank"]] = f"{node.get('hostname') or node['node_id']}#{node['node_rank']}"
    phases = doc.get("phases", {})
    out: dict[str, dict[str, float]] = {label: {} for label in labels.values()}
    per_node_gemm: dict[int, dict[str, list[float]]] = {}
    for row in phases.get("compute", {}).get("ranks", []):
        bucket = per_node_gemm.setdefault(row["node_rank"], {})
        for dtype, g in row["gemm"].items():
            bucket.setdefault(f"gemm_{dtype}_tflops", []).append(g["tflops"])
        if row.get("hbm"):
            bucket.setdefault("hbm_gbps", []).append(row["hbm"]["gbps"])
    for node, figures in per_node_gemm.items():
        for name, values in figures.items():
            out.setdefault(labels.get(node, str(node)), {})[f"{name} median"] = _median(values)
    for row in phases.get("intra_node", {}).get("per_node", []):
        label = labels.get(row["node_rank"], str(row["node_rank"]))
        out.setdefault(label, {})["intra_node_busbw_gbps"] = row["busbw_gbps"]
    return out


def rederived(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every figure, check, verdict and capacity re-derived from its raw data.

    Raises ``ValueError`` when the document does not have a suite results file's structure.
    """
    from gosok.benchmarks.suite.derive import rederive_suite

    result = rederive_suite.full(doc)
    if result.doc is None:
        raise ValueError(f"cannot re-derive the suite results: {result.malformed}")
    return result.doc


def compare_docs(a: dict[str, Any], b: dict[str, Any], tolerance: float = 0.05) -> list[CompareRow]:
    """Every comparable figure of two suite runs, from their re-derived documents."""
    a, b = rederived(a), rederived(b)
    rows: list[CompareRow] = []
    va, vb = a.get("verdict", {}).get("cluster"), b.get("verdict", {}).get("cluster")
    if va and vb:
        worse = SEVERITY[vb] > SEVERITY[va]
        status = REGRESSION if worse else (IMPROVED if SEVERITY[vb] < SEVERITY[va] else SAME)
        rows.append(CompareRow("cluster", "verdict", "", va, vb, None, status))
    fa = len(a.get("verdict", {}).get("failing_nodes", []))
    fb = len(b.get("verdict", {}).get("failing_nodes", []))
    rows.append(
        CompareRow(
            "cluster",
            "failing nodes",
            "nodes",
            fa,
            fb,
            None,
            REGRESSION if fb > fa else (IMPROVED if fb < fa else SAME),
        )
    )
    rows += figure_rows(cluster_figures(a), cluster_figures(b), tolerance, "cluster")
    na, nb = node_figures(a), node_figures(b)
    for label in sorted(set(na) & set(nb)):
        for name in sorted(set(na[label]) & set(nb[label])):
            unit = "TFLOPS" if "tflops" in name else "GB/s"
            rows.append(
                figure_row(f"node {label}", name, unit, na[label][name], nb[label][name], tolerance)
            )
    return rows
