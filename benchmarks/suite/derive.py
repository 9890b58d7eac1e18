"""A suite's judgement from its measurements, in one place, and the re-derivation of a
suite results file with it.

The run calls ``judge`` once its phases are done; every re-derivation of a results file
(``gosok report``, ``verify``, ``compare``, ``audit``: ``rederive_suite``) recomputes the
compute rows from their step records and the collective records with the compute and
collective benchmarks' own re-derivations, replays the isolation bisection from the
recorded group readings, calls the same ``judge`` and compares. ``isolation_due`` is the
one rule for whether the isolation phase runs (the run decides with it; a re-derivation
checks the file's decision with it).

Use: ``due, reasons = isolation_due(checks, suite.isolation.trigger)``;
``judge(phases, labels, gpu, contract, gpus_per_node, drift_keys)``; ``rederive_suite(doc)``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from gosok.benchmarks.collectives.rederive import (
    collective_record,
    record_label,
    time_reduce_problems,
)
from gosok.benchmarks.compute.rederive import step_figures
from gosok.benchmarks.core.rederive import (
    MAX_LISTED,
    REDACTED,
    Rederivation,
    Rederiver,
    as_dict,
    as_list,
    difference,
    differences,
    json_copy,
    require,
    settings_of,
    short,
    typed,
)
from gosok.benchmarks.suite.capacity import capacity
from gosok.benchmarks.suite.evaluate import (
    confirmed_ranks,
    isolation_checks,
    isolation_reasons,
    key_figure,
)
from gosok.benchmarks.suite.phases import compute_kernels, evaluate_phases, rail_figures
from gosok.benchmarks.suite.verdicts import (
    Check,
    check_from_dict,
    cluster_verdict,
    exit_code,
    failing_nodes,
    node_verdicts,
)
from gosok.launcher.config.schema import GpuSpec
from gosok.launcher.errors import ConfigError


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


# --- re-derivation of a suite results file ------------------------------------------------


def gpu_from_dict(data: Any) -> GpuSpec:
    """The ``GpuSpec`` a file recorded (``doc["gpu"]``), typed; unknown fields refused."""
    data = typed(GpuSpec, data, "gpu entry")
    require(isinstance(data.get("key"), str), "gpu entry has no key")
    return GpuSpec(**data)


def contract_from_dict(data: Any) -> Any:
    """The ``ContractConfig`` a file recorded (``doc["contract"]``), typed, every field present."""
    from gosok.benchmarks.suite.schema import ContractConfig, Expectation, OutlierRule

    data = typed(ContractConfig, data, "contract")
    names = {f.name for f in fields(ContractConfig)}
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    require(
        not missing and not unknown, f"contract fields wrong: missing {missing}, unknown {unknown}"
    )

    def expectations(block: Any, what: str) -> dict[str, Any]:
        block = as_dict(block, what)
        return {m: Expectation(**typed(Expectation, e, f"{what}.{m}")) for m, e in block.items()}

    rest = {
        k: v
        for k, v in data.items()
        if k not in ("expectations", "gpu_expectations", "outlier", "metric_outliers")
    }
    return ContractConfig(
        **rest,
        expectations=expectations(data["expectations"], "contract.expectations"),
        gpu_expectations={
            g: expectations(block, f"contract.gpu_expectations.{g}")
            for g, block in as_dict(data["gpu_expectations"], "gpu_expectations").items()
        },
        outlier=OutlierRule(**typed(OutlierRule, data["outlier"], "contract.outlier")),
        metric_outliers={
            m: OutlierRule(**typed(OutlierRule, o, f"contract.metric_outliers.{m}"))
            for m, o in as_dict(data["metric_outliers"], "metric_outliers").items()
        },
    )


def catalogue_notes(recorded: dict[str, Any], what: str = "gpu entry") -> list[str]:
    """How a recorded catalogue entry differs from gosok's own entry of the same key."""
    from gosok.launcher.config.catalogue import gpu_spec

    key = recorded.get("key")
    try:
        ours = json_copy(asdict(gpu_spec(key)))
    except KeyError:
        return [f"the recorded {what} {key!r} is not in gosok's catalogue"]
    differing = [
        f"{name}: file {short(recorded[name])}, gosok {short(ours[name])}"
        for name in recorded
        if name in ours and difference(recorded[name], ours[name]) is not None
    ]
    if not differing:
        return []
    return [
        f"the recorded {what} {key!r} differs from gosok's catalogue (checks were judged "
        f"against the file's entry): " + "; ".join(differing)
    ]


def contract_notes(recorded: dict[str, Any], gpu_key: str) -> list[str]:
    """How a recorded contract differs from gosok's contract of the same name."""
    from gosok.benchmarks.suite.schema import load_contract

    name = recorded.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return [f"the recorded contract {short(name)} is not one of gosok's contracts"]
    try:
        ours = json_copy(asdict(load_contract(str(name), gpu_key)))
    except (ConfigError, OmegaConfBaseException, OSError):
        return [f"the recorded contract {name!r} is not one of gosok's contracts"]
    found = difference(recorded, ours)
    if found is None:
        return []
    path, a, b = found
    return [
        f"the recorded contract {name!r} differs from gosok's contract of that name at "
        f"{path.lstrip('.')}: file {short(a)}, gosok {short(b)}"
    ]


# --- suite ---------------------------------------------------------------------------------


class _ReplayMismatch(Exception):
    pass


def rederive_compute_phase(r: Rederivation, phase: dict[str, Any], suite: Any, world: int) -> None:
    _compute_rows(r, phase["ranks"], "phases.compute.ranks", suite, world)
    if phase.get("confirm"):
        confirm = as_dict(phase["confirm"], "phases.compute.confirm")
        _compute_rows(r, confirm["ranks"], "phases.compute.confirm.ranks", suite, world)


def _compute_rows(r: Rederivation, rows: Any, where_all: str, suite: Any, world: int) -> None:

    ranks = as_list(rows, where_all)
    seen = sorted(row["rank"] for row in ranks)
    r.same(f"{where_all} (one row per GPU)", seen, list(range(world)))
    expected = {figure: (kernel, shape) for figure, kernel, _, shape in compute_kernels(suite)}
    for row in ranks:
        row = as_dict(row, "compute row")
        where = f"compute {'confirm ' if 'confirm' in where_all else ''}rank {row['rank']}"
        parts = [(f, g) for f, g in as_dict(row["gemm"], f"{where}.gemm").items()]
        if row.get("hbm"):
            parts.append(("hbm", as_dict(row["hbm"], f"{where}.hbm")))
        for figure, part in parts:
            label = f"{where} {figure}"
            require(figure in expected, f"{label}: not a figure this suite measures")
            step = part.get("step")
            if not isinstance(step, dict):
                r.missing.append(f"{label}: no step record with raw times_us")
                continue
            kernel, shape = expected[figure]
            r.same(f"{label}: step entry (suite.compute)", step["entry"], kernel)
            r.same(f"{label}: step shape (suite.compute)", step["shape"], asdict(shape))
            for key in ("rank", "node_rank", "local_rank"):
                r.same(f"{label}: step {key}", step[key], row[key])
            figures = step_figures(r, step, f"{label} step")
            if figures is None:
                continue
            step.update(figures)
            if figure == "hbm":
                r.same(f"{label}: bytes_per_call", part["bytes_per_call"], figures["bytes"])
                r.same(f"{label}: buffer_bytes", part["buffer_bytes"], step["shape"]["n_bytes"])
                r.same(f"{label}: gbps", part["gbps"], figures["gbps"])
                part["gbps"] = figures["gbps"]
            else:
                for key in ("m", "n", "k"):
                    r.same(f"{label}: {key}", part[key], step["shape"][key])
                r.same(f"{label}: tflops", part["tflops"], figures["tflops"])
                part["tflops"] = figures["tflops"]


def rederive_collective_phase(
    r: Rederivation, name: str, phase: dict[str, Any], settings: Any
) -> None:

    records = as_list(phase["records"], f"phases.{name}.records")
    for index, record in enumerate(records):
        record = as_dict(record, f"{name} record {index}")
        collective_record(r, record, record_label(index, record, f"{name} record"))
    op = settings.ops[0]
    groups = phase.get("groups")
    if groups is None:
        r.missing.append(f"phases.{name}: no groups (which ranks each group measured)")
    else:
        groups = as_list(groups, f"phases.{name}.groups")
    if name == "intra_node":
        count = len(groups) if groups is not None else len(phase["per_node"])
        derived = [{"node_rank": i, **key_figure(records, i, op)} for i in range(count)]
        r.same(f"phases.{name}.per_node", phase["per_node"], derived)
        phase["per_node"] = derived
        return
    derived_key = key_figure(records, 0, op)
    for key, value in derived_key.items():
        r.same(f"phases.{name}.{key}", phase[key], value)
    if groups is not None:
        r.same(f"phases.{name}.ranks", phase["ranks"], len(groups[0]))
    phase.update(derived_key)
    if phase.get("rails"):
        _suite_rails(r, as_dict(phase["rails"], f"phases.{name}.rails"), op)


def _suite_rails(r: Rederivation, rails: dict[str, Any], op: str) -> None:

    records = as_list(rails["records"], "phases.inter_node.rails.records")
    for index, record in enumerate(records):
        record = as_dict(record, f"rails record {index}")
        collective_record(r, record, record_label(index, record, "rails record"))
    count = len(as_list(rails["groups"], "phases.inter_node.rails.groups"))
    derived = json_copy(rail_figures(records, op, count))
    r.same("phases.inter_node.rails.per_rail", rails.get("per_rail"), derived["per_rail"])
    rails.update(derived)


def _replay_isolation(
    r: Rederivation, recorded: dict[str, Any], n_nodes: int, settings: Any, contract: Any
) -> dict[str, Any]:
    """Feed the recorded group readings back through ``isolate``; the re-derived outcome."""
    from gosok.benchmarks.suite.isolation import isolate

    rounds = as_list(recorded["rounds"], "isolation outcome rounds")
    played: list[int] = []

    def measure(groups: list[list[int]]) -> list[float]:
        if len(played) >= len(rounds):
            raise _ReplayMismatch("the recorded readings stop before the isolation does")
        readings = as_list(rounds[len(played)], "isolation round")
        played.append(1)
        wanted = [list(g) for g in groups]
        measured = [list(as_dict(g, "isolation reading")["nodes"]) for g in readings]
        if measured != wanted:
            raise _ReplayMismatch(
                f"round {len(played)}: the file measured groups {measured}, but the readings "
                f"before it lead to {wanted}"
            )
        return [g["value"] for g in readings]

    try:
        outcome = isolate(
            n_nodes,
            measure,
            group_size=settings.group_size,
            slow_below=contract.isolation_slow_below,
            exhaustive_below=settings.exhaustive_below,
        )
    except _ReplayMismatch as err:
        r.problems.append(f"phases.isolation.outcome: {err}")
        return recorded
    derived = json_copy(outcome.to_dict())
    r.same("phases.isolation.outcome", recorded, derived)
    return derived


def _suite(r: Rederivation) -> None:
    from gosok.benchmarks.suite.schema import effective_suite

    doc = r.doc
    assert doc is not None
    gpu = gpu_from_dict(doc["gpu"])
    contract = contract_from_dict(doc["contract"])
    r.notes += catalogue_notes(doc["gpu"])
    r.notes += contract_notes(doc["contract"], gpu.key)
    cluster = as_dict(doc["config"]["cluster"], "config.cluster")
    r.same("gpu.key (config cluster.gpu)", gpu.key, cluster["gpu"])
    gpus_per_node = cluster["gpus_per_node"]
    suite = effective_suite(settings_of(doc["config"]["suite"], "config.suite"), gpu.key)
    labels = as_list(doc["nodes"], "nodes")
    n_nodes = len(labels)
    phases = as_dict(doc["phases"], "phases")
    listed = list(suite.phases)
    ran = [name for name in listed if name != "isolation"]
    for name in ran:
        require(name in phases, f"phases.{name} is absent though suite.phases lists it")
    if "compute" in phases:
        rederive_compute_phase(r, phases["compute"], suite.compute, n_nodes * gpus_per_node)
    for name in ("intra_node", "inter_node"):
        if name in phases:
            rederive_collective_phase(r, name, phases[name], suite[name])
    if "intra_node" in phases:
        r.same(
            "phases.intra_node (one group per node)", len(phases["intra_node"]["per_node"]), n_nodes
        )
    if "inter_node" in phases:
        r.same("phases.inter_node.nodes", phases["inter_node"]["nodes"], n_nodes)
    drift_keys = _drift_keys(r, list(suite.inventory.drift_keys), doc["checks"])
    if "isolation" in listed:
        before = evaluate_phases(phases, gpu, contract, gpus_per_node, drift_keys)
        should_run, reasons = isolation_due(before, suite.isolation.trigger)
        recorded = as_dict(phases.get("isolation"), "phases.isolation")
        r.same("phases.isolation.triggered", recorded.get("triggered"), should_run)
        if should_run and recorded.get("triggered"):
            outcome = _replay_isolation(r, recorded["outcome"], n_nodes, suite.isolation, contract)
            derived = {"triggered": True, "reasons": reasons or ["trigger=always"]}
            r.same("phases.isolation.reasons", recorded["reasons"], derived["reasons"])
            phases["isolation"] = {**derived, "outcome": outcome}
        else:
            r.same("phases.isolation.reasons", recorded.get("reasons"), reasons)
            phases["isolation"] = {"triggered": False, "reasons": reasons}
    judged = json_copy(judge(phases, labels, gpu, contract, gpus_per_node, drift_keys))
    _compare_checks(r, as_list(doc["checks"], "checks"), judged["checks"])
    r.same("verdict", doc["verdict"], judged["verdict"])
    r.same("capacity", doc.get("capacity"), judged["capacity"])
    doc.update(judged)


def _drift_keys(r: Rederivation, recorded: list[Any], stored_checks: Any) -> list[str]:
    """The inventory keys compared across nodes. When the recorded list was redacted on
    writing (a key name that looks secret), the keys the file's drift checks name are used."""
    if REDACTED not in recorded:
        return recorded
    named = [
        str(c["name"]).removeprefix("drift.")
        for c in as_list(stored_checks, "checks")
        if isinstance(c, dict) and str(c.get("name", "")).startswith("drift.")
    ]
    r.notes.append(
        "config suite.inventory.drift_keys was redacted when the file was written; the "
        "version-drift keys were taken from the file's own drift checks"
    )
    return list(dict.fromkeys(named))


def _compare_checks(r: Rederivation, stored: list[Any], derived: list[dict[str, Any]]) -> None:

    r.compared += 1
    if len(stored) != len(derived):
        r.problems.append(
            f"checks: the file has {len(stored)}, the measurements give {len(derived)}"
        )
        return
    differing = [
        i
        for i, (a, b) in enumerate(zip(stored, derived, strict=True))
        if difference(a, b) is not None
    ]
    for i in differing[:MAX_LISTED]:
        try:
            was = check_from_dict(stored[i]).line()
        except TypeError:
            was = short(stored[i])
        r.problems.append(
            f"check {i}: stored '{was}', re-derived '{check_from_dict(derived[i]).line()}'"
        )
    if len(differing) > MAX_LISTED:
        r.problems.append(f"checks: {len(differing) - MAX_LISTED} more differ")


rederive_suite = Rederiver("suite", _suite)


# --- against the auditor's reference ----------------------------------------------------------


def coverage_problems(doc: dict[str, Any], suite: Any, per_node: int) -> list[str]:
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


def reference_suite_problems(
    doc: dict[str, Any], rederived: dict[str, Any], contract: str | None
) -> list[str]:
    """How a suite file differs from the reference: gosok's catalogue entry, the auditor's
    (or gosok's) contract, gosok's suite settings, the method and coverage; and whether the
    reference judges it worse than it says."""
    from gosok.benchmarks.suite.schema import load_contract, reference_suite
    from gosok.benchmarks.suite.verdicts import SEVERITY, cluster_verdict
    from gosok.launcher.config.catalogue import gpu_spec

    cluster = doc["config"]["cluster"]
    gpu_key, per_node = cluster["gpu"], cluster["gpus_per_node"]
    try:
        gpu = gpu_spec(gpu_key)
    except KeyError:
        return [f"GPU type {repr(gpu_key)} is not in gosok's catalogue"]
    recorded_suite = doc["config"]["suite"]
    suite = reference_suite(str(recorded_suite.get("name")), gpu_key)
    if suite is None:
        return [f"suite {repr(recorded_suite.get('name'))} is not one of gosok's"]
    from omegaconf import OmegaConf

    reference_contract = load_contract(contract or suite.contract, gpu_key)
    problems = differences("gpu", doc["gpu"], json_copy(asdict(gpu)))
    problems += differences("contract", doc["contract"], json_copy(asdict(reference_contract)))
    recorded = OmegaConf.to_container(as_recorded_suite(recorded_suite, gpu_key))
    problems += differences("suite", recorded, OmegaConf.to_container(suite))
    phases = rederived.get("phases") or {}
    for name in ("intra_node", "inter_node"):
        problems += time_reduce_problems(
            (phases.get(name) or {}).get("records") or [], f"phases.{name}"
        )
    problems += [f"missing: {m}" for m in coverage_problems(rederived, suite, per_node)]
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


def as_recorded_suite(recorded: Any, gpu_key: str) -> Any:
    from omegaconf import OmegaConf

    from gosok.benchmarks.suite.schema import SuiteConfig, effective_suite

    return effective_suite(OmegaConf.merge(OmegaConf.structured(SuiteConfig), recorded), gpu_key)
