"""Semantic checks of a composed config, run before anything is started.

Hydra already refuses unknown keys and wrong types (the schemas are dataclasses);
this module checks what types cannot: ranges, names from closed sets, cross-field rules.
Every problem names its full key and, for closed sets, the allowed values.
Use: ``validate_cluster(cfg.cluster)`` and ``validate_collectives(cfg.bench)`` return
lists of problems; ``raise_if(problems)`` raises ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gosok.launcher.catalogue import load_catalogue
from gosok.launcher.errors import ConfigError
from gosok.launcher.schema import (
    CLUSTER_KINDS,
    COLLECTIVE_OPS,
    DTYPES,
    MODES,
    SCOPES,
    TIME_REDUCTIONS,
)


def _listing(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def one_of(key: str, value: Any, allowed: Sequence[Any]) -> list[str]:
    if value not in allowed:
        return [f"{key}={value!r} is not allowed; allowed values: {_listing(allowed)}"]
    return []


def each_of(key: str, values: Iterable[Any], allowed: Sequence[Any]) -> list[str]:
    values = list(values)
    if not values:
        return [f"{key} is empty; choose from: {_listing(allowed)}"]
    bad = [v for v in values if v not in allowed]
    if bad:
        return [f"{key} has unknown value(s) {bad}; allowed values: {_listing(allowed)}"]
    if len(set(values)) != len(values):
        return [f"{key} lists a value twice: {values}"]
    return []


def positive(key: str, value: float, minimum: float = 1) -> list[str]:
    if value < minimum:
        return [f"{key}={value} must be >= {minimum}"]
    return []


def validate_cluster(cluster: Any, prefix: str = "cluster") -> list[str]:
    problems: list[str] = []
    catalogue = load_catalogue()
    problems += one_of(f"{prefix}.gpu", cluster.gpu, sorted(catalogue))
    problems += one_of(f"{prefix}.kind", cluster.kind, CLUSTER_KINDS)
    problems += positive(f"{prefix}.nodes", cluster.nodes)
    problems += positive(f"{prefix}.gpus_per_node", cluster.gpus_per_node)
    problems += positive(f"{prefix}.spare_nodes", cluster.spare_nodes, 0)
    if cluster.kind == "local" and cluster.gpu != "cpu":
        problems.append(
            f"{prefix}.gpu={cluster.gpu!r} needs kind=existing; a local cluster is the CPU "
            "fallback (gpu=cpu)"
        )
    if cluster.kind == "local":
        local = cluster.local
        problems += positive(f"{prefix}.local.cpus_per_node", local.cpus_per_node)
        problems += positive(
            f"{prefix}.local.object_store_bytes", local.object_store_bytes, 78_643_200
        )
        if not 0 <= local.port <= 65535:
            problems.append(f"{prefix}.local.port={local.port} must be in 0..65535 (0: free port)")
    if cluster.kind == "existing" and not cluster.address:
        problems.append(
            f"{prefix}.address is not set; kind=existing needs the Ray head address, "
            "e.g. cluster.address=10.0.0.1:6379"
        )
    return problems


def validate_collectives(
    bench: Any, world_size: int | None = None, prefix: str = "bench"
) -> list[str]:
    problems: list[str] = []
    problems += each_of(f"{prefix}.ops", bench.ops, COLLECTIVE_OPS)
    problems += each_of(f"{prefix}.dtypes", bench.dtypes, DTYPES)
    problems += each_of(f"{prefix}.modes", bench.modes, MODES)
    problems += one_of(f"{prefix}.scope", bench.scope, SCOPES)
    problems += one_of(f"{prefix}.time_reduce", bench.time_reduce, TIME_REDUCTIONS)
    problems += positive(f"{prefix}.min_bytes", bench.min_bytes)
    problems += positive(f"{prefix}.max_bytes", bench.max_bytes)
    problems += positive(f"{prefix}.step_factor", bench.step_factor, 2)
    problems += positive(f"{prefix}.warmup_iters", bench.warmup_iters, 0)
    problems += positive(f"{prefix}.iters", bench.iters)
    problems += positive(f"{prefix}.timeout_s", bench.timeout_s, 1)
    problems += positive(f"{prefix}.min_busbw_gbps", bench.min_busbw_gbps, 0)
    if bench.min_bytes > bench.max_bytes:
        problems.append(
            f"{prefix}.min_bytes={bench.min_bytes} is larger than "
            f"{prefix}.max_bytes={bench.max_bytes}"
        )
    if world_size is not None and not 0 <= bench.root < world_size:
        problems.append(f"{prefix}.root={bench.root} must be in 0..{world_size - 1}")
    return problems


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)
