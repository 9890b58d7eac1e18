"""Semantic checks of a composed config, run before anything is started.

Hydra already refuses unknown keys and wrong types (the schemas are dataclasses);
this module checks what types cannot: ranges, names from closed sets, cross-field rules.
Every problem names its full key and, for closed sets, the allowed values.
Use: ``validate_cluster(cfg.cluster)`` returns a list of problems; ``raise_if(problems)``
raises ``ConfigError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from gosok.launcher.config.catalogue import load_catalogue
from gosok.launcher.config.schema import CLUSTER_KINDS
from gosok.launcher.errors import ConfigError


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


def positive(key: str, value: Any, minimum: float = 1, maximum: float | None = None) -> list[str]:
    """A finite number in [minimum, maximum]; NaN, inf and non-numbers are refused."""
    allowed = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"{key}={value!r} is not a number; allowed: a number {allowed}"]
    if not math.isfinite(value):
        return [f"{key}={value} is not finite; allowed: a number {allowed}"]
    if value < minimum or (maximum is not None and value > maximum):
        return [f"{key}={value} is out of range; allowed: a number {allowed}"]
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


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)
