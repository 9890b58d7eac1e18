"""A suite results document built from made-up measurements, without Ray.

It goes through the same evaluation, capacity and sealing code as a real run, so report,
verify and compare can be tested in milliseconds at any cluster size and GPU type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gosok.launcher.results.store import write_results
from tests.unit.report.trust_docs import suite_doc


def synthetic_doc(
    nodes: int = 4,
    per_node: int = 8,
    gpu: str = "h200",
    slow_node: int | None = None,
    slow: float = 0.6,
    seed: int = 0,
    scale: float = 1.0,
) -> dict[str, Any]:
    """A suite results document with raw data that re-derives (see report/trust_docs)."""
    return suite_doc(nodes, per_node, gpu, slow_node, slow, seed, scale, cluster=f"synthetic_{gpu}")


def write_doc(path: Path, **kwargs: Any) -> dict[str, Any]:
    return write_results(path, synthetic_doc(**kwargs))
