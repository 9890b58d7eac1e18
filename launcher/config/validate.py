"""Semantic checks of a composed config, run before anything is started.

Hydra already refuses unknown keys and wrong types (the schemas are dataclasses);
this module checks what types cannot: ranges, names from closed sets, cross-field rules.
Every problem names its full key and, for closed sets, the allowed values.
Use: ``validate_cluster(cfg.cluster)`` returns a list of problems; ``raise_if(problems)``
raises ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
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


MAX_NODES = 4096  # the programme's largest cluster is 510 nodes
MAX_GPUS_PER_NODE = 64
MAX_LOCAL_NODES = 32  # the CPU fallback runs every node on this machine
MAX_TIMEOUT_S = 7 * 86_400
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def name_problems(key: str, value: Any) -> list[str]:
    if not isinstance(value, str) or not NAME.match(value):
        return [f"{key}={value!r} is not allowed; allowed: 1-64 letters, digits, '_', '.', '-'"]
    return []


def timeout(key: str, value: Any) -> list[str]:
    return positive(key, value, 0.001, maximum=MAX_TIMEOUT_S)


def validate_cluster(cluster: Any, prefix: str = "cluster") -> list[str]:
    problems: list[str] = []
    catalogue = load_catalogue()
    problems += name_problems(f"{prefix}.name", cluster.name)
    problems += one_of(f"{prefix}.gpu", cluster.gpu, sorted(catalogue))
    problems += one_of(f"{prefix}.kind", cluster.kind, CLUSTER_KINDS)
    most = MAX_LOCAL_NODES if cluster.kind == "local" else MAX_NODES
    # A slurm preset outside an allocation resolves to 0: said below, with the reason.
    outside_slurm = cluster.kind == "slurm" and cluster.nodes == 0
    if not outside_slurm:
        problems += positive(f"{prefix}.nodes", cluster.nodes, 1, maximum=most)
    if not (outside_slurm and cluster.gpus_per_node == 0):
        problems += positive(f"{prefix}.gpus_per_node", cluster.gpus_per_node, 1, MAX_GPUS_PER_NODE)
    problems += positive(f"{prefix}.spare_nodes", cluster.spare_nodes, 0, maximum=most)
    if cluster.kind == "local" and cluster.gpu != "cpu":
        problems.append(
            f"{prefix}.gpu={cluster.gpu!r} needs kind=existing; a local cluster is the CPU "
            "fallback (gpu=cpu)"
        )
    if cluster.kind == "local":
        local = cluster.local
        problems += positive(f"{prefix}.local.cpus_per_node", local.cpus_per_node, 1, 1024)
        problems += positive(
            f"{prefix}.local.object_store_bytes", local.object_store_bytes, 78_643_200, 1 << 40
        )
        problems += timeout(f"{prefix}.local.start_timeout_s", local.start_timeout_s)
        problems += one_of(f"{prefix}.isolation", cluster.isolation, ("none", "netns"))
        if cluster.isolation == "netns":
            from gosok.launcher.cluster.netns import problem

            reason = problem()
            if reason:
                problems.append(f"{prefix}.isolation=netns is not possible here: {reason}")
        else:
            problems += loopback_problems(f"{prefix}.local.node_ip", local.node_ip)
        if not 0 <= local.port <= 65535:
            problems.append(f"{prefix}.local.port={local.port} must be in 0..65535 (0: free port)")
    if cluster.kind == "slurm":
        from gosok.launcher.cluster.slurm import allocation_problems

        problems += allocation_problems(cluster, os.environ, prefix)
    elif cluster.exclude_file:
        problems.append(
            f"{prefix}.exclude_file={cluster.exclude_file!r} applies to kind=slurm only (gosok "
            f"starts Ray there); {prefix}.kind={cluster.kind!r}: leave those hosts out of the "
            "Ray cluster instead"
        )
    if cluster.kind == "existing" and not cluster.address:
        problems.append(
            f"{prefix}.address is not set; kind=existing needs the Ray head address, "
            "e.g. cluster.address=10.0.0.1:6379"
        )
    return problems


def loopback_problems(key: str, value: Any) -> list[str]:
    """A local cluster listens on loopback only: nobody else on the network can reach it."""
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        return [f"{key}={value!r} is not an IP address; allowed: an address in 127.0.0.0/8"]
    if not address.is_loopback:
        return [f"{key}={value} is not a loopback address; allowed: an address in 127.0.0.0/8"]
    return []


def raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def added_key_problems(cfg: Any, overrides: Sequence[str]) -> list[str]:
    """``+key=value`` (and ``++``) that adds a key no schema has: Hydra accepts it silently
    and nothing reads it, so a typo would run with the default. Keys added to free-form maps
    (``+job.env.NAME=...``) are allowed."""
    import dataclasses
    import difflib

    from omegaconf import DictConfig, OmegaConf

    problems = []
    for override in overrides:
        if not override.startswith("+") or "=" not in override:
            continue
        key = override.lstrip("+").split("=", 1)[0].strip()
        *parents, leaf = key.split(".")
        node: Any = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if schema is None or not dataclasses.is_dataclass(schema):
            continue  # a free-form map
        known = [f.name for f in dataclasses.fields(schema)]
        if leaf in known:
            continue
        near = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
        hint = (
            f"nearest: {', '.join('.'.join([*parents, n]) for n in near)}"
            if near
            else (f"allowed under {'.'.join(parents) or 'the top level'}: {', '.join(known)}")
        )
        problems.append(f"{key} is not a setting gosok knows ({override!r}); {hint}")
    return problems


def _schema_fields(name: str) -> list[str]:
    """The fields of the registered config schema (or one nested in it) called ``name``."""
    import dataclasses

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    seen: set[type] = set()
    todo: list[Any] = [ConfigStore.instance().repo]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo += list(item.values())
            continue
        node = getattr(item, "node", None)
        kind = OmegaConf.get_type(node) if node is not None else item
        if not isinstance(kind, type) or not dataclasses.is_dataclass(kind) or kind in seen:
            continue
        seen.add(kind)
        if kind.__name__ == name:
            return [f.name for f in dataclasses.fields(kind)]
        for f in dataclasses.fields(kind):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if dataclasses.is_dataclass(default):
                todo.append(type(default))
    return []


def reword_unknown_key(text: str) -> str:
    """Hydra's refusal of an unknown key, said as gosok says it: the key and the nearest
    valid ones (instead of the advice to add it with ``+``, which gosok refuses too)."""
    import difflib

    found = re.search(
        r"Could not override '([^']+)'\.\s*\nTo append to your config use \S+\s*\n"
        r"Key '([^']+)' not in '(\w+)'.*?(?=\n\n|\Z)",
        text,
        re.S,
    )
    if not found:
        return text
    key, leaf, schema = found.groups()
    known = _schema_fields(schema)
    prefix = key[: -len(leaf)] if key.endswith(leaf) else ""
    near = difflib.get_close_matches(leaf, known, n=3, cutoff=0.5)
    hint = (
        f"nearest: {', '.join(prefix + n for n in near)}"
        if near
        else f"allowed: {', '.join(prefix + n for n in known)}"
    )
    said = f"error: invalid config:\n  - {key} is not a setting gosok knows; {hint}"
    rest = text[found.end() :]
    rest = re.sub(r"\n*Set the environment variable HYDRA_FULL_ERROR=1.*", "", rest, flags=re.S)
    return text[: found.start()] + said + rest.rstrip() + "\n"
