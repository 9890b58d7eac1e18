"""Typed schema of ``bench=collectives`` (nccl-tests' -b -e -f -w -n -c) and its checks.

``configs/bench/collectives.yaml`` selects this schema; the defaults live here only.
Use: ``validate_collectives(cfg.bench, cfg.cluster)`` returns the problems, each naming
its key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gosok.benchmarks.collectives.ops import COLLECTIVES, DTYPES, MODES
from gosok.launcher.config.validate import each_of, one_of, positive

SCOPES = ("all", "intra_node", "inter_node")
TIME_REDUCTIONS = ("avg", "min", "max", "rank0")


@dataclass
class CollectivesBenchConfig:
    """The collective sweep, in nccl-tests terms."""

    name: str = "collectives"
    #: Collectives to sweep (any of all_reduce, all_gather, reduce_scatter, broadcast,
    #: reduce, all_to_all, sendrecv).
    ops: list[str] = field(default_factory=lambda: COLLECTIVES.names())
    #: Element types: float32, bfloat16, float16.
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    #: Smallest size in bytes (nccl-tests -b); all_gather & co. count the gathered buffer.
    min_bytes: int = 1024
    #: Largest size in bytes (-e).
    max_bytes: int = 4 * 1024 * 1024
    #: Size multiplier between steps (-f), at least 2.
    step_factor: int = 4
    #: Untimed calls before timing (-w).
    warmup_iters: int = 2
    #: Timed back-to-back calls per size (-n).
    iters: int = 10
    #: Check results on fresh data once per size (-c): the #wrong column.
    check: bool = True
    #: out_of_place and/or in_place (torch offers some ops in one mode only: N/A).
    modes: list[str] = field(default_factory=lambda: list(MODES))
    #: all ranks at once, every node alone (intra_node), or local rank 0s (inter_node).
    scope: str = "all"
    #: Root rank of broadcast and reduce.
    root: int = 0
    #: How per-rank times combine (nccl-tests -a): avg, min, max, rank0.
    time_reduce: str = "avg"
    #: Split the ranks into groups measured side by side, as nccl-tests' NCCL_TESTS_SPLIT:
    #: "mod:<k>" (group = rank % k; k = GPUs per node: one group per rail) or "div:<k>"
    #: (group = rank // k; k = GPUs per node: each node alone). busbw is per group.
    split: str = ""
    #: Show per-iteration statistics in the table (nccl-tests -I 1): the slowest rank's
    #: time per iteration, min / max / p99 / cv. Every iteration is kept either way.
    per_iteration: bool = False
    #: Leave the first iterations out of the per-iteration summary (nccl-tests -K).
    per_iteration_skip: int = 0
    #: Exit 1 when an op's average busbw is below this (GB/s; 0 = off).
    min_busbw_gbps: float = 0.0
    #: Seconds one size may take on the ranks before the run is stopped.
    timeout_s: float = 300.0


def sweep_sizes(min_bytes: int, max_bytes: int, step_factor: int) -> list[int]:
    """nccl-tests' sizes: min_bytes, x step_factor, while <= max_bytes."""
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= step_factor
    return sizes


ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MAX_ITERS = 1_000_000


def buffer_limit_bytes(cluster: Any) -> int:
    """The largest buffer one rank may ask for: a quarter of its device's memory (a
    collective holds up to three such buffers), or of its share of this host's memory on
    the CPU fallback."""
    from gosok.launcher.config.catalogue import gpu_spec

    spec = gpu_spec(cluster.gpu)
    if cluster.gpu != "cpu" and spec.hbm_gb:
        return int(spec.hbm_gb * 1e9) // 4
    import psutil

    ranks_here = cluster.nodes * cluster.gpus_per_node if cluster.kind == "local" else 1
    return psutil.virtual_memory().total // (4 * max(1, ranks_here))


def group_size(cluster: Any, scope: str) -> int:
    return {
        "all": cluster.nodes * cluster.gpus_per_node,
        "intra_node": cluster.gpus_per_node,
        "inter_node": cluster.nodes,
    }.get(scope, cluster.nodes * cluster.gpus_per_node)


def _split_problems(bench: Any, cluster: Any, prefix: str) -> list[str]:
    from gosok.launcher.ranks.plan import SPLIT

    if not bench.split:
        return []
    found = SPLIT.match(str(bench.split))
    if not found:
        return [f"{prefix}.split={bench.split!r} is not allowed; allowed: mod:<k> or div:<k>"]
    if bench.scope != "all":
        return [f"{prefix}.split={bench.split!r} needs {prefix}.scope=all (it splits every rank)"]
    world = cluster.nodes * cluster.gpus_per_node if cluster is not None else None
    k = int(found.group(2))
    if world is not None and (world % k or not 1 < k < world):
        return [
            f"{prefix}.split={bench.split!r} is not allowed for {world} ranks; allowed: k > 1 "
            f"dividing {world} and smaller than it"
        ]
    return []


def validate_collectives(bench: Any, cluster: Any = None, prefix: str = "bench") -> list[str]:
    """Every setting, each problem naming its key, the value and what is allowed."""
    problems: list[str] = []
    problems += each_of(f"{prefix}.ops", bench.ops, COLLECTIVES.names())
    problems += each_of(f"{prefix}.dtypes", bench.dtypes, DTYPES)
    problems += each_of(f"{prefix}.modes", bench.modes, MODES)
    problems += one_of(f"{prefix}.scope", bench.scope, SCOPES)
    problems += one_of(f"{prefix}.time_reduce", bench.time_reduce, TIME_REDUCTIONS)
    limit = buffer_limit_bytes(cluster) if cluster is not None else 1 << 40
    problems += positive(f"{prefix}.min_bytes", bench.min_bytes, 1, maximum=limit)
    problems += positive(f"{prefix}.max_bytes", bench.max_bytes, 1, maximum=limit)
    problems += positive(f"{prefix}.step_factor", bench.step_factor, 2, maximum=1 << 20)
    problems += positive(f"{prefix}.warmup_iters", bench.warmup_iters, 0, maximum=MAX_ITERS)
    problems += positive(f"{prefix}.iters", bench.iters, 1, maximum=MAX_ITERS)
    problems += positive(f"{prefix}.timeout_s", bench.timeout_s, 1, maximum=7 * 86_400)
    problems += positive(f"{prefix}.min_busbw_gbps", bench.min_busbw_gbps, 0, maximum=1e6)
    if problems:
        return problems
    if not 0 <= bench.per_iteration_skip < bench.iters:
        problems.append(
            f"{prefix}.per_iteration_skip={bench.per_iteration_skip} is not allowed; "
            f"allowed: 0 to {prefix}.iters - 1 ({bench.iters - 1})"
        )
    if bench.min_bytes > bench.max_bytes:
        problems.append(
            f"{prefix}.min_bytes={bench.min_bytes} is larger than "
            f"{prefix}.max_bytes={bench.max_bytes}"
        )
    problems += _split_problems(bench, cluster, prefix)
    if cluster is not None:
        world = cluster.nodes * cluster.gpus_per_node
        if not 0 <= bench.root < world:
            problems.append(f"{prefix}.root={bench.root} is not allowed; allowed: 0..{world - 1}")
        # Sizes too small for an op are skipped (N/A); a sweep where every size is too
        # small would measure nothing, so it is refused.
        ranks = group_size(cluster, bench.scope)
        widest = max(ELEMENT_BYTES[d] for d in bench.dtypes)
        for op in bench.ops:
            need = widest * ranks if COLLECTIVES[op].chunked else widest
            if bench.max_bytes < need:
                problems.append(
                    f"{prefix}.max_bytes={bench.max_bytes} is too small for {op}: no size gives "
                    f"every rank an element; allowed: >= {need} ({widest} B x "
                    f"{ranks if COLLECTIVES[op].chunked else 1} rank(s))"
                )
    return problems
