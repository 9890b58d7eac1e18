"""The acceptance suite's phases as typed records: each declares how its settings are
checked (before anything starts), how long it should take (pure, for ``dry_run``), how it
runs on the ranks, and which checks judge what it measured.

Phases run in the order ``suite.phases`` lists them; isolation (``after_checks``) runs
last, only when a check failed or a node is an outlier (or ``trigger=always``).

Use: ``PHASES["compute"].validate(suite.compute, "suite.compute")``;
``suite_plan(suite, cluster, gpu)``; ``evaluate_phases(phases, gpu, contract, ...)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from gosok.benchmarks.collectives.ops import COLLECTIVES, DTYPES
from gosok.benchmarks.collectives.schema import CollectivesBenchConfig
from gosok.benchmarks.compute.entries import FP8_BACKEND_CHOICES, Shape
from gosok.benchmarks.core.registry import Registry
from gosok.benchmarks.suite import evaluate, plan
from gosok.benchmarks.suite.verdicts import Check
from gosok.launcher.config.validate import each_of, one_of, positive

FP8_RECIPES = ("tensorwise", "rowwise", "blockwise")
GEMM_DTYPES = ("bf16", "fp8")


@dataclass
class PhaseContext:
    """What a running phase gets: the live ranks, where to print, and the suite's facts."""

    group: Any
    console: Any
    contract: Any = None
    seed: int = 1234
    reasons: list[str] = field(default_factory=list)
    gpu: Any = None  # the GPU entry the suite judges by (the compute phase's confirm step)


@dataclass(frozen=True)
class SuitePhase:
    name: str
    summary: str
    validate: Callable[[Any, str], list[str]]
    estimate: Callable[[Any, Any, dict[str, float]], plan.PhaseEstimate | None]
    run: Callable[[PhaseContext, Any], dict[str, Any]]
    checks: Callable[[dict[str, Any], Any, Any, Any], list[Check]]
    after_checks: bool = False


# --- validation ---------------------------------------------------------------------------


def _validate_inventory(cfg: Any, key: str) -> list[str]:
    return []


def _validate_compute(cfg: Any, key: str) -> list[str]:
    problems = each_of(f"{key}.gemm_dtypes", cfg.gemm_dtypes, GEMM_DTYPES)
    problems += one_of(f"{key}.fp8_recipe", cfg.fp8_recipe, FP8_RECIPES)
    problems += one_of(f"{key}.fp8_backend", cfg.fp8_backend, FP8_BACKEND_CHOICES)
    problems += positive(f"{key}.gemm_size", cfg.gemm_size, 16, maximum=65536)
    problems += positive(f"{key}.hbm_bytes", cfg.hbm_bytes, 1024, maximum=64 << 30)
    problems += positive(f"{key}.warmup_iters", cfg.warmup_iters, 0, maximum=10_000)
    problems += positive(f"{key}.iters", cfg.iters, 1, maximum=100_000)
    problems += positive(f"{key}.min_sample_s", cfg.min_sample_s, 0, maximum=60)
    problems += positive(f"{key}.flush_bytes", cfg.flush_bytes, 0, maximum=4 << 30)
    problems += positive(f"{key}.cpu_threads", cfg.cpu_threads, 1, maximum=1024)
    problems += positive(f"{key}.timeout_s", cfg.timeout_s, 1, maximum=86_400)
    return problems


def _validate_collective(cfg: Any, key: str) -> list[str]:
    problems = each_of(f"{key}.ops", cfg.ops, COLLECTIVES.names())
    problems += one_of(f"{key}.dtype", cfg.dtype, DTYPES)
    problems += positive(f"{key}.min_bytes", cfg.min_bytes, 1, maximum=1 << 40)
    problems += positive(f"{key}.max_bytes", cfg.max_bytes, 1, maximum=1 << 40)
    problems += positive(f"{key}.step_factor", cfg.step_factor, 2, maximum=1 << 20)
    problems += positive(f"{key}.warmup_iters", cfg.warmup_iters, 0, maximum=10_000)
    problems += positive(f"{key}.iters", cfg.iters, 1, maximum=100_000)
    problems += positive(f"{key}.repeats", cfg.repeats, 1, maximum=1000)
    problems += positive(f"{key}.timeout_s", cfg.timeout_s, 1, maximum=86_400)
    problems += one_of(f"{key}.scope", cfg.scope, ("all", "inter_node"))
    if not problems and cfg.min_bytes > cfg.max_bytes:
        problems.append(
            f"{key}.min_bytes={cfg.min_bytes} is larger than {key}.max_bytes={cfg.max_bytes}"
        )
    return problems


def _validate_isolation(cfg: Any, key: str) -> list[str]:
    problems = one_of(f"{key}.trigger", cfg.trigger, ("on_failure", "always", "never"))
    problems += one_of(f"{key}.ranks", cfg.ranks, ("local0", "all"))
    problems += one_of(f"{key}.op", cfg.op, COLLECTIVES.names())
    problems += one_of(f"{key}.dtype", cfg.dtype, DTYPES)
    problems += positive(f"{key}.group_size", cfg.group_size, 2, maximum=4096)
    problems += positive(f"{key}.exhaustive_below", cfg.exhaustive_below, 0, maximum=64)
    problems += positive(f"{key}.size_bytes", cfg.size_bytes, 1, maximum=1 << 40)
    problems += positive(f"{key}.warmup_iters", cfg.warmup_iters, 0, maximum=10_000)
    problems += positive(f"{key}.iters", cfg.iters, 1, maximum=100_000)
    problems += positive(f"{key}.repeats", cfg.repeats, 1, maximum=1000)
    problems += positive(f"{key}.timeout_s", cfg.timeout_s, 1, maximum=86_400)
    return problems


# --- running ------------------------------------------------------------------------------


def _sweep_config(phase: Any, scope: str, ops: list[str] | None = None) -> Any:
    return CollectivesBenchConfig(
        ops=list(ops or phase.ops),
        dtypes=[phase.dtype],
        min_bytes=phase.min_bytes,
        max_bytes=phase.max_bytes,
        step_factor=phase.step_factor,
        warmup_iters=phase.warmup_iters,
        iters=phase.iters,
        check=True,
        scope=scope,
        timeout_s=phase.timeout_s,
    )


def _repeated_sweep(
    ctx: PhaseContext, phase: Any, groups: list[list[int]], scope: str
) -> list[dict[str, Any]]:
    from rich.console import Console

    from gosok.benchmarks.collectives.driver import measure_collectives

    records = []
    bench = _sweep_config(phase, scope)
    quiet = Console(quiet=True)
    for repeat in range(phase.repeats):
        bench.check = repeat == 0  # correctness once; later repeats only time
        if repeat == 0:  # one table per phase, named; the repeats are in results.json
            ctx.console.print(
                f"## {scope} collectives ({len(groups)} group(s)); the first of "
                f"{phase.repeats} repeat(s) shown",
                highlight=False, markup=False,
            )  # fmt: skip
        console = ctx.console if repeat == 0 else quiet
        for record in measure_collectives(ctx.group, bench, console, groups=groups):
            records.append({**record, "repeat": repeat})
    return records


def _run_inventory(ctx: PhaseContext, cfg: Any) -> dict[str, Any]:
    from gosok.benchmarks.suite.ranks import inventory_rank

    nodes = [n for n in ctx.group.run(inventory_rank) if n is not None]
    return {"nodes": sorted(nodes, key=lambda n: n["node_rank"])}


def compute_kernels(cfg: Any) -> list[tuple[str, str, str, Shape]]:
    """(figure key, kernel, backend, shape) the compute phase measures on every GPU."""
    square = Shape(f"square_{cfg.gemm_size}", cfg.gemm_size, cfg.gemm_size, cfg.gemm_size)
    out = []
    for dtype in cfg.gemm_dtypes:
        if dtype == "bf16":
            out.append(("bf16", "gemm_bf16", "torch", square))
        else:
            out.append(("fp8", f"gemm_fp8_{cfg.fp8_recipe}", cfg.fp8_backend, square))
    if cfg.hbm:
        out.append(
            ("hbm", "hbm_triad", "torch", Shape(f"hbm_{cfg.hbm_bytes}", n_bytes=cfg.hbm_bytes))
        )
    return out


def _run_compute(ctx: PhaseContext, cfg: Any) -> dict[str, Any]:
    """The same per-rank step as ``bench=gemm`` (``compute.step.compute_step``) on every GPU
    at once. When a GPU reads below its floor or as an outlier (FAIL or WARN), every GPU is
    measured once more (``confirm``): a GPU is judged by the better of its two readings, so a
    FAIL stands only when both are low; both readings are kept."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)
    out: dict[str, Any] = {"settings": settings, "ranks": _measure_compute(ctx, cfg)}
    if ctx.gpu is None or ctx.contract is None:
        return out
    flagged = sorted(
        {c.subject for c in evaluate.compute_checks(out["ranks"], ctx.gpu, ctx.contract)
         if c.status in ("FAIL", "WARN")}
    )  # fmt: skip
    if flagged:
        ctx.console.print(
            f"compute: {len(flagged)} GPU(s) read low ({', '.join(flagged[:4])}"
            f"{', ...' if len(flagged) > 4 else ''}); measuring every GPU again to confirm",
            highlight=False, markup=False,
        )  # fmt: skip
        out["confirm"] = {"reason": flagged, "ranks": _measure_compute(ctx, cfg)}
    return out


def _measure_compute(ctx: PhaseContext, cfg: Any) -> list[dict[str, Any]]:
    """One reading of every compute figure on every GPU, one row per rank."""
    from gosok.benchmarks.compute.step import compute_step

    per_rank: list[dict[str, Any]] = []
    steps = []
    for figure, kernel, backend, shape in compute_kernels(cfg):
        records = ctx.group.run(
            compute_step,
            kernel,
            backend,
            asdict(shape),
            cfg.warmup_iters,
            cfg.iters,
            cfg.flush_l2,
            cfg.flush_bytes,
            ctx.seed,
            cfg.cpu_threads,
            True,
            cfg.min_sample_s,
            timeout_s=cfg.timeout_s,
        )
        steps.append((figure, records))
    for index, first in enumerate(steps[0][1] if steps else []):
        row: dict[str, Any] = {
            "rank": first["rank"],
            "node_rank": first["node_rank"],
            "local_rank": first["local_rank"],
            "device": first["device"],
            "gemm": {},
            "hbm": None,
        }
        for figure, records in steps:
            record = records[index]
            if record.get("skipped"):
                continue
            if figure == "hbm":
                row["hbm"] = {
                    "kind": "triad",
                    "bytes_per_call": record["bytes"],
                    "buffer_bytes": record["shape"]["n_bytes"],
                    "gbps": record["gbps"],
                    "step": record,
                }
            else:
                row["gemm"][figure] = {
                    "m": record["shape"]["m"],
                    "n": record["shape"]["n"],
                    "k": record["shape"]["k"],
                    "backend": record.get("backend_used") or record["backend"],
                    "tflops": record["tflops"],
                    "step": record,
                }
        per_rank.append(row)
    return per_rank


def _run_intra_node(ctx: PhaseContext, cfg: Any) -> dict[str, Any]:
    from gosok.launcher.ranks.plan import rank_groups

    groups = rank_groups(ctx.group.plan, "intra_node")
    records = _repeated_sweep(ctx, cfg, groups, "intra_node")
    per_node = [
        {"node_rank": index, **evaluate.key_figure(records, index, cfg.ops[0])}
        for index in range(len(groups))
    ]
    return {"records": records, "per_node": per_node, "groups": groups}


def _run_inter_node(ctx: PhaseContext, cfg: Any) -> dict[str, Any]:
    from gosok.launcher.ranks.plan import rank_groups, split_groups

    plan = ctx.group.plan
    groups = rank_groups(plan, cfg.scope)
    records = _repeated_sweep(ctx, cfg, groups, cfg.scope)
    out = {
        "records": records,
        "groups": groups,
        "nodes": len(plan.nodes),
        "ranks": len(groups[0]),
        **evaluate.key_figure(records, 0, cfg.ops[0]),
    }
    per_node = plan.world_size // len(plan.nodes)
    if cfg.rails and per_node > 1 and len(plan.nodes) > 1:
        rails = split_groups(plan.world_size, f"mod:{per_node}")  # local GPU i of every node
        rail_records = _repeated_sweep(ctx, cfg, rails, "rails")
        out["rails"] = {
            "records": rail_records,
            "groups": rails,
            **rail_figures(rail_records, cfg.ops[0], len(rails)),
        }
    return out


def rail_figures(records: list[dict[str, Any]], op: str, count: int) -> dict[str, Any]:
    """Each rail's key figure (median busbw over repeats at the largest size)."""
    return {"per_rail": [{"rail": i, **evaluate.key_figure(records, i, op)} for i in range(count)]}


def isolation_measure(group: Any, cfg: Any, quiet: Any) -> Callable[[list[list[int]]], list[float]]:
    """``measure(node_groups) -> busbw per group`` for ``isolate``: all groups at once."""
    from gosok.benchmarks.collectives.driver import measure_collectives
    from gosok.launcher.ranks.plan import node_subset_groups

    rank_plan = group.plan
    bench = CollectivesBenchConfig(
        ops=[cfg.op],
        dtypes=[cfg.dtype],
        min_bytes=cfg.size_bytes,
        max_bytes=cfg.size_bytes,
        step_factor=2,
        warmup_iters=cfg.warmup_iters,
        iters=cfg.iters,
        check=False,
        timeout_s=cfg.timeout_s,
    )

    def measure(node_groups: list[list[int]]) -> list[float]:
        groups = node_subset_groups(rank_plan, node_groups)
        if cfg.ranks == "local0":
            groups = [[r for r in g if rank_plan.ranks[r].local_rank == 0] for g in groups]
        samples: list[list[float]] = [[] for _ in groups]
        for _ in range(cfg.repeats):
            for record in measure_collectives(group, bench, quiet, groups=groups):
                samples[record["group"]].append(record["busbw_gbps"])
        return [statistics.median(s) for s in samples]

    return measure


def _run_isolation(ctx: PhaseContext, cfg: Any) -> dict[str, Any]:
    from rich.console import Console

    from gosok.benchmarks.suite.isolation import isolate

    reasons = ctx.reasons or ["trigger=always"]
    ctx.console.print(
        f"isolation: {len(reasons)} reason(s), e.g. {reasons[0]}", highlight=False, markup=False
    )
    log: list[str] = []
    inner = isolation_measure(ctx.group, cfg, Console(quiet=True))

    def measure(node_groups: list[list[int]]) -> list[float]:
        values = inner(node_groups)
        shown = ", ".join(f"{g}:{v:.4g}" for g, v in zip(node_groups, values, strict=True))
        line = f"  round {len(log) + 1}: {len(node_groups)} group(s) {shown}"
        log.append(line)
        ctx.console.print(line[:400], highlight=False, markup=False)
        return values

    outcome = isolate(
        len(ctx.group.plan.nodes),
        measure,
        group_size=cfg.group_size,
        slow_below=ctx.contract.isolation_slow_below,
        exhaustive_below=cfg.exhaustive_below,
    )
    return {"triggered": True, "reasons": reasons, "outcome": outcome.to_dict()}


# --- the records --------------------------------------------------------------------------

PHASES: Registry[SuitePhase] = Registry("suite phase")
for _phase in (
    SuitePhase(
        "inventory", "per-node facts, expected vs found, version drift",
        _validate_inventory, plan.estimate_inventory, _run_inventory,
        lambda out, gpu, contract, suite: evaluate.inventory_checks(
            out["nodes"], gpu, contract, suite.gpus_per_node, list(suite.drift_keys)
        ),
    ),
    SuitePhase(
        "compute", "GEMM and HBM on every GPU at once (bench=gemm's step)",
        _validate_compute, plan.estimate_compute, _run_compute,
        lambda out, gpu, contract, suite: evaluate.compute_checks(
            evaluate.confirmed_ranks(out), gpu, contract
        ),
    ),
    SuitePhase(
        "intra_node", "collectives inside every node at once",
        _validate_collective, plan.estimate_intra_node, _run_intra_node,
        lambda out, gpu, contract, suite: evaluate.intra_node_checks(
            out["per_node"], gpu, contract
        ),
    ),
    SuitePhase(
        "inter_node", "collectives across the whole allocation",
        _validate_collective, plan.estimate_inter_node, _run_inter_node,
        lambda out, gpu, contract, suite: evaluate.inter_node_checks(out, gpu, contract)
        + evaluate.rail_checks(out, contract),
    ),
    SuitePhase(
        "isolation", "bisect slow node groups to name bad nodes and links",
        _validate_isolation, plan.estimate_isolation, _run_isolation,
        lambda out, gpu, contract, suite: evaluate.isolation_checks(out),
        after_checks=True,
    ),
):  # fmt: skip
    PHASES.add(_phase.name, _phase)


# --- whole-suite functions ----------------------------------------------------------------


def validate_phases(suite: Any) -> list[str]:
    """Every setting of every phase the suite lists, before anything starts."""
    problems = each_of("suite.phases", suite.phases, PHASES.names())
    for name in PHASES:
        problems += PHASES[name].validate(suite[name], f"suite.{name}")
    return problems


def suite_plan(suite: Any, cluster: Any, gpu: Any) -> dict[str, Any]:
    """Phase by phase: what runs at once and an estimate of its wall time (pure)."""
    rates = plan.rates_for(gpu)
    estimates = [plan.setup_estimate(suite, cluster)]
    for name in suite.phases:
        estimate = PHASES[name].estimate(suite, cluster, rates)
        if estimate is not None:
            estimates.append(estimate)
    forced = suite.isolation.trigger == "always"
    always = sum(e.seconds for e in estimates if e.phase != "isolation" or forced)
    return {
        "suite": suite.name,
        "cluster": cluster.name,
        "gpu": gpu.key,
        "nodes": cluster.nodes,
        "gpus_per_node": cluster.gpus_per_node,
        "phases": [asdict(e) for e in estimates],
        "estimate_seconds": always,
        "estimate_seconds_with_isolation": sum(e.seconds for e in estimates),
    }


@dataclass(frozen=True)
class JudgeFacts:
    """What checks need beyond the measurements."""

    gpus_per_node: int
    drift_keys: list[str]


def evaluate_phases(
    phases: dict[str, Any], gpu: Any, contract: Any, gpus_per_node: int, drift_keys: list[str]
) -> list[Check]:
    """Checks for every measured phase (isolation excluded: it runs after these)."""
    facts = JudgeFacts(gpus_per_node, list(drift_keys))
    checks: list[Check] = []
    for name, record in PHASES.items():
        if name in phases and not record.after_checks:
            checks += record.checks(phases[name], gpu, contract, facts)
    return checks
