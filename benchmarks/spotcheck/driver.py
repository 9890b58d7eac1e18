"""``gosok bench suite=spotcheck``: the auditor measures a sample of a provider's claims.

A provider's suite results say what every node delivers. The auditor, on the provider's
cluster, draws ``spotcheck.nodes`` of the claimed nodes with a generator seeded by the
auditor's nonce (``audit.nonce``) and the claims file's hash, so the provider cannot know
in advance which nodes will be measured. On those nodes it runs the claimed suite's
per-node phases with gosok's own settings for that suite (compute, intra-node) and one
collective among them (inter-node), then compares node by node: a claimed figure above
the auditor's measurement of the same node by more than the contract's
``spotcheck_tolerance`` FAILs, naming node, figure, claimed and measured.

A FAIL is confirmed before it is declared: when any figure fails, every figure is measured
once more and each is judged by the better of the two readings; both are kept.

The claimed figures are the claims file's *re-derived* figures (from its raw times, with
gosok's formulas), so a claim is what the provider's raw data says, never a stored number.

Use: ``gosok bench suite=spotcheck spotcheck.claims=results.json spotcheck.nodes=2
audit.nonce=N sign.key=auditor.key cluster=<the provider's cluster>``.
"""

from __future__ import annotations

import hashlib
import random
import statistics
from typing import Any

from rich.console import Console

from gosok.benchmarks.core.rederive import (
    Rederivation,
    Rederiver,
    as_dict,
    as_list,
    json_copy,
    settings_of,
)
from gosok.benchmarks.core.registry import Benchmark
from gosok.benchmarks.suite.verdicts import FAIL, WARN, Check, cluster_verdict, exit_code

#: The claimed suite's phases a spot check repeats (inventory and isolation judge nothing
#: a provider claims as a figure).
RUN_PHASES = ("compute", "intra_node", "inter_node")
NODE_FIGURES = ("gemm_bf16_tflops", "gemm_fp8_tflops", "hbm_gbps", "intra_node_busbw_gbps")
CLUSTER_FIGURE = "inter_node_busbw_gbps"
UNITS = {"tflops": "TFLOPS", "gbps": "GB/s"}


# --- pure: the draw, the figures, the judgement ---------------------------------------------


def draw(n_nodes: int, k: int, nonce: str, claims_sha256: str) -> list[int]:
    """The claimed node ranks measured: ``k`` of ``n_nodes``, seeded by the auditor's nonce
    and the claims file's hash (the same nonce draws other nodes for another file)."""
    seed = hashlib.sha256(f"gosok spotcheck\n{nonce}\n{claims_sha256}".encode()).digest()
    return sorted(random.Random(int.from_bytes(seed[:8], "big")).sample(range(n_nodes), k))


def node_figures(phases: dict[str, Any], n_nodes: int) -> list[dict[str, float]]:
    """Per node: the median over its GPUs of each compute figure (each GPU's better reading
    when the suite confirmed) and its intra-node busbw, from a suite's ``phases``."""
    from gosok.benchmarks.suite.evaluate import confirmed_ranks, rank_figures

    out: list[dict[str, float]] = [{} for _ in range(n_nodes)]
    if "compute" in phases:
        series: dict[tuple[int, str], list[float]] = {}
        for row in confirmed_ranks(phases["compute"]):
            for metric, value in rank_figures(row).items():
                series.setdefault((row["node_rank"], metric), []).append(value)
        for (node, metric), values in series.items():
            out[node][metric] = statistics.median(values)
    for item in (phases.get("intra_node") or {}).get("per_node", []):
        out[item["node_rank"]]["intra_node_busbw_gbps"] = item["busbw_gbps"]
    return out


def cluster_figures(phases: dict[str, Any]) -> dict[str, float]:
    inter = phases.get("inter_node") or {}
    return {CLUSTER_FIGURE: inter["busbw_gbps"]} if "busbw_gbps" in inter else {}


def measured_figures(readings: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Each figure's best reading over ``readings`` (the provider gets the benefit of the
    doubt): ``{"nodes": [per spot-checked node], "cluster": {...}}``."""
    nodes: list[dict[str, float]] = [{} for _ in range(k)]
    cluster: dict[str, float] = {}
    for phases in readings:
        for mine, found in zip(nodes, node_figures(phases, k), strict=True):
            for metric, value in found.items():
                mine[metric] = max(value, mine.get(metric, value))
        for metric, value in cluster_figures(phases).items():
            cluster[metric] = max(value, cluster.get(metric, value))
    return {"nodes": nodes, "cluster": cluster}


def _unit(metric: str) -> str:
    return UNITS[metric.rsplit("_", 1)[1]]


def _check(
    subject: str, node: int | None, metric: str, claimed: float, measured: float | None, tol: float
) -> Check:
    if measured is None:
        status, expected, detail = WARN, "a measurement", "the spot check could not measure it"
    else:
        status = FAIL if claimed > measured * (1 + tol) else "PASS"
        expected = f"<= measured {measured:.4g} x {1 + tol:g}"
        detail = f"claimed {claimed / measured:.2f}x measured" if measured else ""
    return Check(
        "spotcheck", metric, "node" if node is not None else "cluster", subject, node, None,
        claimed, _unit(metric), expected, "claimed vs measured", status, detail,
    )  # fmt: skip


def judge(
    claimed: dict[str, Any], measured: dict[str, Any], drawn: list[dict[str, Any]], tol: float
) -> list[Check]:
    """One check per claimed figure of each drawn node, and the cluster's inter-node figure
    when the spot check measured a collective among two or more nodes."""
    checks = []
    for index, node in enumerate(drawn):
        mine = measured["nodes"][index]
        subject = f"node {node['node_rank']} ({node['hostname']})"
        for metric in NODE_FIGURES:
            value = claimed["nodes"][node["node_rank"]].get(metric)
            if value is not None:
                found = mine.get(metric)
                checks.append(_check(subject, node["node_rank"], metric, value, found, tol))
    value = claimed["cluster"].get(CLUSTER_FIGURE)
    if value is not None and len(drawn) > 1:
        found = measured["cluster"].get(CLUSTER_FIGURE)
        checks.append(_check("cluster", None, CLUSTER_FIGURE, value, found, tol))
    return checks


def derive(spot: dict[str, Any], readings: list[dict[str, Any]]) -> dict[str, Any]:
    """Every derived part of a spot check's results from its raw readings and the claimed
    figures: measured figures, checks and verdict. The run and ``gosok report`` call this."""
    measured = measured_figures(readings, len(spot["drawn"]))
    checks = judge(spot["claimed"], measured, spot["drawn"], spot["tolerance"])
    verdict = cluster_verdict(checks)
    return {
        "measured": measured,
        "checks": [c.to_dict() for c in checks],
        "verdict": {
            "spotcheck": verdict,
            "failing": sorted({c.subject for c in checks if c.status == FAIL}),
            "exit_code": exit_code(verdict),
        },
    }


# --- the claims ----------------------------------------------------------------------------


def load_claims(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The claims file, sealed and of kind suite, and its re-derived copy (``InputError`` or
    ``ConfigError`` naming the file otherwise)."""
    from gosok.benchmarks.report.trust import load_input
    from gosok.benchmarks.suite.derive import rederive_suite
    from gosok.launcher.errors import ConfigError

    doc, sealed = load_input(path)
    where = f"spotcheck.claims={path!r}"
    if not sealed:
        raise ConfigError([f"{where}: its sha256 does not match its content (edited?)"])
    if doc["kind"] != "suite":
        raise ConfigError([f"{where}: results of kind {doc['kind']!r}; a claim is a suite's"])
    result = rederive_suite.full(doc)
    if result.doc is None:
        raise ConfigError([f"{where}: malformed suite results: {result.malformed}"])
    return doc, result.doc


def claimed_figures(rederived: dict[str, Any]) -> dict[str, Any]:
    phases = rederived["phases"]
    return {
        "nodes": node_figures(phases, len(rederived["nodes"])),
        "cluster": cluster_figures(phases),
    }


# --- the benchmark record ------------------------------------------------------------------


def _setup(cfg: Any) -> dict[str, Any]:
    """Everything the run needs, checked: claims, drawn nodes, reference suite, contract."""
    from gosok.benchmarks.report.trust import InputError
    from gosok.benchmarks.suite.schema import load_contract, reference_suite
    from gosok.launcher.errors import ConfigError

    spot = cfg.spotcheck
    problems = []
    if not spot.claims:
        problems.append("spotcheck.claims is not set; allowed: a provider's suite results.json")
    if not cfg.audit.nonce:
        problems.append("audit.nonce is not set; a spot check draws its nodes with it")
    if not cfg.sign.key:
        problems.append("sign.key is not set; a spot check is signed with the auditor's key")
    if problems:
        raise ConfigError(problems)
    try:
        doc, rederived = load_claims(spot.claims)
    except InputError as err:
        raise ConfigError([f"spotcheck.claims: {err}"]) from None
    labels = rederived["nodes"]
    gpu_key = str(doc["gpu"]["key"])
    per_node = doc["config"]["cluster"]["gpus_per_node"]
    if gpu_key != cfg.cluster.gpu:
        problems.append(
            f"cluster.gpu={cfg.cluster.gpu!r}, but the claims are for {gpu_key!r}; allowed: "
            f"the claimed GPU type"
        )
    if per_node != cfg.cluster.gpus_per_node:
        problems.append(
            f"cluster.gpus_per_node={cfg.cluster.gpus_per_node}, but the claims ran "
            f"{per_node} per node; allowed: {per_node}"
        )
    if not isinstance(spot.nodes, int) or not 1 <= spot.nodes <= len(labels):
        problems.append(
            f"spotcheck.nodes={spot.nodes!r}; allowed: 1 to {len(labels)} (the claimed nodes)"
        )
    name = str(doc["config"]["suite"].get("name"))
    suite = reference_suite(name, gpu_key)
    if suite is None:
        problems.append(f"spotcheck.claims: suite {name!r} is not one of gosok's")
    if problems:
        raise ConfigError(problems)
    contract = load_contract(suite.contract, gpu_key)
    ranks = draw(len(labels), spot.nodes, cfg.audit.nonce, doc["sha256"])
    return {
        "suite": suite,
        "contract": contract,
        "spot": {
            "claims": {
                "path": str(spot.claims),
                "sha256": doc["sha256"],
                "provider": doc["config"]["cluster"].get("provider"),
                "cluster": doc["config"]["cluster"].get("name"),
                "suite": name,
                "gpu": gpu_key,
                "nodes": len(labels),
                "signed_by": (doc.get("signature") or {}).get("public_key_fingerprint"),
            },
            "drawn": [
                {"node_rank": r, "hostname": labels[r]["hostname"], "ip": labels[r]["ip"]}
                for r in ranks
            ],
            "tolerance": contract.spotcheck_tolerance,
            "contract": contract.name,
            "phases": [p for p in suite.phases if p in RUN_PHASES],
            "claimed": claimed_figures(rederived),
        },
        "pin": tuple(labels[r] for r in ranks),
    }


def validate(cfg: Any) -> list[str]:
    from gosok.launcher.errors import ConfigError

    try:
        _setup(cfg)
    except ConfigError as err:
        return list(err.problems)
    return []


def plan_lines(cfg: Any) -> list[str]:
    setup = _setup(cfg)
    spot = setup["spot"]
    claims = spot["claims"]
    return [
        f"spot check of {claims['path']} ({claims['provider']}/{claims['cluster']}, suite "
        f"{claims['suite']}, {claims['nodes']} nodes x {cfg.cluster.gpus_per_node} "
        f"{claims['gpu']})",
        f"  nodes drawn with the nonce: {[d['hostname'] for d in spot['drawn']]}",
        f"  phases: {spot['phases']} (gosok's {claims['suite']} settings); contract "
        f"{spot['contract']}, tolerance {spot['tolerance']:g}",
    ]


def _reading(ctx: Any, suite: Any, names: list[str]) -> dict[str, Any]:
    from gosok.benchmarks.suite.phases import PHASES

    reading = {}
    for name in names:
        if name == "inter_node" and len(ctx.group.plan.nodes) < 2:
            continue  # one node: no collective among nodes
        ctx.console.print(f"[bold]phase {name}[/]")
        reading[name] = PHASES[name].run(ctx, suite[name])
    return reading


def run(cfg: Any, console: Console) -> int:
    from gosok.benchmarks.core.harness import bench_session, write_run_results
    from gosok.benchmarks.suite.phases import PhaseContext
    from gosok.launcher.config.catalogue import gpu_spec
    from gosok.launcher.errors import ClusterMismatchError
    from gosok.launcher.results.journal import note

    setup = _setup(cfg)
    spot, suite = setup["spot"], setup["suite"]
    console.print(
        f"spot check: {len(spot['drawn'])} of {spot['claims']['nodes']} claimed nodes drawn: "
        f"{', '.join(d['hostname'] for d in spot['drawn'])}",
        highlight=False, markup=False,
    )  # fmt: skip
    timeout = max(cfg.collective_timeout_s, suite.compute.timeout_s, suite.inter_node.timeout_s)
    with bench_session(cfg, timeout, pin_nodes=setup["pin"]) as session:
        found = [n.hostname for n in session.group.plan.nodes]
        wanted = [d["hostname"] for d in spot["drawn"]]
        if found != wanted:
            raise ClusterMismatchError(f"the ranks landed on {found}, not the drawn {wanted}")
        gpu = gpu_spec(cfg.cluster.gpu)
        ctx = PhaseContext(session.group, console, setup["contract"], cfg.seed, gpu=gpu)
        readings = [_reading(ctx, suite, spot["phases"])]
        note("spotcheck", {"reading": 0, "result": readings[0]})
        if derive(spot, readings)["verdict"]["failing"]:
            console.print("spot check: a claim is above the measurement; measuring again")
            readings.append(_reading(ctx, suite, spot["phases"]))
            note("spotcheck", {"reading": 1, "result": readings[1]})
        from omegaconf import OmegaConf

        payload = {
            "spotcheck": spot,
            "settings": OmegaConf.to_container(suite),
            "readings": readings,
            **derive(spot, readings),
        }
        path = write_run_results("spotcheck", cfg, session, payload)
    from gosok.launcher.results.store import load_results

    doc = load_results(path)
    for line in summary_lines(doc):
        console.print(line, highlight=False, markup=False)
    console.print(f"results: {path}", highlight=False)
    return doc["verdict"]["exit_code"]


def summary_lines(doc: dict[str, Any]) -> list[str]:
    from gosok.benchmarks.report.trust import printable
    from gosok.benchmarks.suite.verdicts import check_from_dict

    spot = doc["spotcheck"]
    claims = spot["claims"]
    lines = [
        f"spot check of {claims['path']} (sha256 {str(claims['sha256'])[:12]}, "
        f"{claims['provider']}/{claims['cluster']}): {len(spot['drawn'])} of {claims['nodes']} "
        f"nodes, tolerance {spot['tolerance']:g}, {len(doc['readings'])} reading(s)"
    ]
    lines += [check_from_dict(c).line() for c in doc["checks"]]
    lines.append(f"spot check: {doc['verdict']['spotcheck']}")
    return [printable(line) for line in lines]


def render(doc: dict[str, Any], args: Any) -> int:
    for line in summary_lines(doc):
        print(line)
    return int(doc["verdict"]["exit_code"])


# --- re-derivation of a spot check's results ------------------------------------------------


def _spotcheck(r: Rederivation) -> None:
    from gosok.benchmarks.suite.derive import rederive_collective_phase, rederive_compute_phase

    doc = r.doc
    assert doc is not None
    spot = as_dict(doc["spotcheck"], "spotcheck")
    settings = settings_of(doc["settings"], "settings")
    world = (
        len(as_list(spot["drawn"], "spotcheck.drawn")) * doc["config"]["cluster"]["gpus_per_node"]
    )
    for reading in as_list(doc["readings"], "readings"):
        reading = as_dict(reading, "reading")
        if "compute" in reading:
            rederive_compute_phase(r, reading["compute"], settings.compute, world)
        for name in ("intra_node", "inter_node"):
            if name in reading:
                rederive_collective_phase(r, name, reading[name], settings[name])
    for key, value in json_copy(derive(spot, doc["readings"])).items():
        r.same(key, doc.get(key), value)
        doc[key] = value


rederive_spotcheck = Rederiver("spotcheck", _spotcheck)

BENCHMARK = Benchmark(
    name="spotcheck",
    kind="spotcheck",
    summary="the auditor measures a nonce-drawn sample of a provider's claimed nodes",
    validate=validate,
    plan=plan_lines,
    run=run,
    render=render,
    rederive=rederive_spotcheck,
)
