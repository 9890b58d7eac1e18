"""A results file judged against the auditor's reference, never against its own.

Re-derivation (``rederive``) proves a file consistent with what it recorded: its GPU entry,
contract, suite settings and method. A provider who records a laxer contract, a suite with
fewer sizes, a ``time_reduce`` of ``min`` or a file without one node's compute rows stays
consistent. This module compares what the file recorded with the reference, and judges the
re-derived measurements with the reference:

- the GPU entry: gosok's catalogue entry of the GPU type the file names;
- the contract: the auditor's (``--contract NAME|PATH``), else the one gosok's own suite of
  that name picks for that GPU type;
- the suite settings: gosok's suite of that name, as it runs on that GPU type;
- the method: collective times averaged over ranks (nccl-tests' ``-a 1``, the suite's);
- coverage: every node the file lists carries every figure its suite's phases produce.

Use: ``aspect = reference_aspect(doc, rederived_doc, contract=None)`` -> ``Aspect``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gosok.benchmarks.report.rederive import _json_copy, _short, difference
from gosok.benchmarks.report.trust import FAIL, NOT_CHECKED, OK, Aspect, printable

REFERENCE_TIME_REDUCE = "avg"


def reference_suite(name: str, gpu: str) -> Any:
    from omegaconf import OmegaConf

    from gosok.benchmarks.suite.schema import SuiteConfig, effective_suite
    from gosok.launcher.config.catalogue import config_dir

    path = config_dir() / "suite" / f"{name}.yaml"
    if not name.replace("_", "").isalnum() or not path.is_file():
        return None
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return effective_suite(OmegaConf.merge(OmegaConf.structured(SuiteConfig), raw), gpu)


def _differences(where: str, recorded: Any, reference: Any, limit: int = 6) -> list[str]:
    """Every path at which ``recorded`` differs from ``reference`` (first ``limit``)."""
    out: list[str] = []
    if isinstance(recorded, dict) and isinstance(reference, dict):
        for key in sorted(set(recorded) | set(reference), key=str):
            if key not in reference:
                out.append(f"{where}.{key}: not in the reference")
            elif key not in recorded:
                out.append(f"{where}.{key}: missing (reference {_short(reference[key])})")
            else:
                out += _differences(f"{where}.{key}", recorded[key], reference[key], limit)
            if len(out) >= limit:
                break
        return out[:limit]
    found = difference(recorded, reference)
    if found is None:
        return []
    path, a, b = found
    return [f"{where}{path}: file {_short(a)}, reference {_short(b)}"]


def _coverage(doc: dict[str, Any], suite: Any, per_node: int) -> list[str]:
    """Nodes and GPUs the file lists that lack a figure their suite's phases produce."""
    phases = doc.get("phases") or {}
    nodes = [n.get("node_rank") for n in doc.get("nodes") or [] if isinstance(n, dict)]
    missing = []
    if "compute" in suite.phases:
        rows = {
            (r.get("node_rank"), r.get("local_rank")): r
            for r in (phases.get("compute") or {}).get("ranks") or []
            if isinstance(r, dict)
        }
        for node in nodes:
            for local in range(per_node):
                row = rows.get((node, local))
                if row is None:
                    missing.append(f"node {node} gpu {local}: no compute figures")
                    continue
                for dtype in suite.compute.gemm_dtypes:
                    if dtype not in (row.get("gemm") or {}):
                        missing.append(f"node {node} gpu {local}: no gemm_{dtype}_tflops")
                if not row.get("hbm"):
                    missing.append(f"node {node} gpu {local}: no hbm_gbps")
    if "intra_node" in suite.phases:
        have = {
            r.get("node_rank")
            for r in (phases.get("intra_node") or {}).get("per_node") or []
            if isinstance(r, dict)
        }
        missing += [f"node {n}: no intra_node_busbw_gbps" for n in nodes if n not in have]
    if "inter_node" in suite.phases and "busbw_gbps" not in (phases.get("inter_node") or {}):
        missing.append("cluster: no inter_node_busbw_gbps")
    return missing


def _time_reduce(records: list[Any], where: str) -> list[str]:
    odd = sorted(
        {
            str(r.get("time_reduce"))
            for r in records
            if isinstance(r, dict) and r.get("time_reduce") != REFERENCE_TIME_REDUCE
        }
    )
    if not odd:
        return []
    return [f"{where}: time_reduce {', '.join(odd)}, reference {REFERENCE_TIME_REDUCE!r} "
            "(per-rank times averaged over ranks, nccl-tests' -a 1)"]  # fmt: skip


def _suite(doc: dict[str, Any], rederived: dict[str, Any], contract: str | None) -> list[str]:
    from gosok.benchmarks.suite.phases import evaluate_phases
    from gosok.benchmarks.suite.schema import load_contract
    from gosok.benchmarks.suite.verdicts import SEVERITY, cluster_verdict
    from gosok.launcher.config.catalogue import gpu_spec

    cluster = doc["config"]["cluster"]
    gpu_key, per_node = cluster["gpu"], cluster["gpus_per_node"]
    try:
        gpu = gpu_spec(gpu_key)
    except KeyError:
        return [f"GPU type {printable(repr(gpu_key))} is not in gosok's catalogue"]
    recorded_suite = doc["config"]["suite"]
    suite = reference_suite(str(recorded_suite.get("name")), gpu_key)
    if suite is None:
        return [f"suite {printable(repr(recorded_suite.get('name')))} is not one of gosok's"]
    from omegaconf import OmegaConf

    reference_contract = load_contract(contract or suite.contract, gpu_key)
    problems = _differences("gpu", doc["gpu"], _json_copy(asdict(gpu)))
    problems += _differences("contract", doc["contract"], _json_copy(asdict(reference_contract)))
    recorded = OmegaConf.to_container(_recorded_suite(recorded_suite, gpu_key))
    problems += _differences("suite", recorded, OmegaConf.to_container(suite))
    phases = rederived.get("phases") or {}
    for name in ("intra_node", "inter_node"):
        problems += _time_reduce((phases.get(name) or {}).get("records") or [], f"phases.{name}")
    problems += [f"missing: {m}" for m in _coverage(rederived, suite, per_node)]
    keys = list(suite.inventory.drift_keys)
    checks = evaluate_phases(phases, gpu, reference_contract, per_node, keys)
    judged = cluster_verdict(checks) if checks else None
    stated = (rederived.get("verdict") or {}).get("cluster")
    if judged and stated in SEVERITY and SEVERITY[judged] > SEVERITY[stated]:
        failing = sorted({f"{c.phase}.{c.name}" for c in checks if c.status == judged})
        problems.insert(
            0,
            f"judged against the reference the cluster is {judged} (the file's own contract "
            f"gives {stated}): {', '.join(failing[:6])}",
        )
    return problems


def _recorded_suite(recorded: Any, gpu_key: str) -> Any:
    from omegaconf import OmegaConf

    from gosok.benchmarks.suite.schema import SuiteConfig, effective_suite

    return effective_suite(OmegaConf.merge(OmegaConf.structured(SuiteConfig), recorded), gpu_key)


def _collectives(doc: dict[str, Any]) -> list[str]:
    return _time_reduce(doc.get("records") or [], "records")


def _gemm(doc: dict[str, Any]) -> list[str]:
    from gosok.launcher.config.catalogue import gpu_spec

    peak = doc.get("peak") or {}
    try:
        ours = gpu_spec(str(peak.get("gpu")))
    except KeyError:
        return [f"GPU type {printable(repr(peak.get('gpu')))} is not in gosok's catalogue"]
    problems = []
    for field in ("bf16_tflops", "fp8_tflops", "hbm_tbps"):
        if field in peak and difference(peak[field], getattr(ours, field)) is not None:
            problems.append(
                f"peak.{field}: file {_short(peak[field])}, catalogue "
                f"{_short(getattr(ours, field))}"
            )
    return problems


CHECKERS = {"suite": _suite, "collectives": _collectives, "gemm": _gemm}


def reference_aspect(
    doc: dict[str, Any], rederived: dict[str, Any] | None, contract: str | None = None
) -> Aspect:
    """The ``reference`` aspect: OK when the file's GPU entry, contract, settings, method and
    coverage are the reference's and the reference judges it no worse than it says."""
    from gosok.launcher.errors import ConfigError

    kind = doc.get("kind")
    if rederived is None or kind not in CHECKERS:
        return Aspect("reference", NOT_CHECKED, "the file could not be re-derived")
    try:
        if kind == "suite":
            problems = _suite(doc, rederived, contract)
        else:
            problems = CHECKERS[kind](rederived)
    except ConfigError as err:
        return Aspect("reference", FAIL, "; ".join(err.problems))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return Aspect("reference", FAIL, f"cannot compare with the reference: {err!r}")
    if not problems:
        what = f"contract {contract}" if contract else "gosok's catalogue, contract and suite"
        return Aspect("reference", OK, f"recorded settings and method are the reference's ({what})")
    return Aspect("reference", FAIL, f"{len(problems)} difference(s) from the reference", problems)
