"""A provider's forgery that needs no invented figure: every raw time of a suite results
file scaled (0.25: everything reads 4x faster), every figure re-derived from those times
with gosok's own code (so the file is self-consistent and re-derives), sealed and signed
with the provider's key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gosok.benchmarks.suite.derive import rederive_suite
from gosok.launcher.results.signing import sign_doc
from gosok.launcher.results.store import write_results


def _scale_steps(rows: list[dict[str, Any]], factor: float) -> None:
    for row in rows:
        parts = [*row["gemm"].values(), *([row["hbm"]] if row.get("hbm") else [])]
        for part in parts:
            part["step"]["times_us"] = [t * factor for t in part["step"]["times_us"]]


def scaled_claims(src: Path, dst: Path, factor: float, key: Path) -> Path:
    doc = json.loads(Path(src).read_text())
    phases = doc["phases"]
    if "compute" in phases:
        _scale_steps(phases["compute"]["ranks"], factor)
        if phases["compute"].get("confirm"):
            _scale_steps(phases["compute"]["confirm"]["ranks"], factor)
    for name in ("intra_node", "inter_node"):
        for record in phases.get(name, {}).get("records", []):
            record["per_rank_time_us"] = [t * factor for t in record["per_rank_time_us"]]
            if "per_rank_iter_us" in record:
                rows = record["per_rank_iter_us"]
                record["per_rank_iter_us"] = [[t * factor for t in row] for row in rows]
    result = rederive_suite.full(doc)
    assert result.doc is not None, result.malformed
    consistent = {k: v for k, v in result.doc.items() if k not in ("sha256", "signature")}
    write_results(dst, sign_doc(consistent, key))
    return dst
