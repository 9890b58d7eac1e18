"""The Slurm allocation gosok runs in, read from the job's environment (pure: no Slurm
command, no Ray), and the checks of a ``cluster=slurm`` config against it.

``cluster=slurm`` states no count twice: the preset's ``nodes`` and ``gpus_per_node`` are
resolved from the allocation (``${gosok_slurm:nodes,...}``), and an override that disagrees
with the allocation is refused (exit 2) before Ray starts.

- nodes: every allocated node not on the exclude list, less ``spare_nodes``;
- rank slots per node: the GPUs Slurm gave each node (``SLURM_GPUS_ON_NODE``, else
  ``SLURM_GPUS_PER_NODE``), or on a CPU allocation ``SLURM_NTASKS_PER_NODE`` (default 1).

Use::

    alloc = Allocation.from_env(os.environ)   # None outside a Slurm job
    alloc.hostnames, alloc.gpus_per_node, alloc.usable(excluded)
    problems = allocation_problems(cfg.cluster, os.environ)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXCLUDE_FILE = "exclude.txt"
MAX_HOSTS = 100_000
MAX_EXCLUDE_BYTES = 1 << 20


class HostlistError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unbalanced '[' in {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


def _range_values(spec: str, whole: str) -> list[str]:
    values: list[str] = []
    for item in spec.split(","):
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise HostlistError(f"bad range {item!r} in {whole!r}")
        if not sep:
            values.append(low)
            continue
        width = len(low) if low.startswith("0") else 0
        first, last = int(low), int(high)
        if last < first or last - first > MAX_HOSTS:
            raise HostlistError(f"bad range {item!r} in {whole!r}")
        values += [str(n).zfill(width) for n in range(first, last + 1)]
    return values


def _expand_one(name: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", name)
    if not match:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    return [
        host
        for value in _range_values(match.group(1), whole)
        for host in _expand_one(head + value + tail, whole)
    ]


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list (``gpu[01-03,07],login1``) as hostnames, in order."""
    hosts = [h for part in _split_top(text.strip()) for h in _expand_one(part, text)]
    if len(hosts) > MAX_HOSTS:
        raise HostlistError(f"more than {MAX_HOSTS} hosts in {text[:80]!r}")
    return hosts


def _count(value: str | None) -> int | None:
    """``8``, ``h100:8`` or ``8(x3)`` (Slurm's per-node forms) as 8; None when unset."""
    if not value:
        return None
    match = re.match(r"^(?:[\w.-]+:)*(\d+)(?:\(x\d+\))?$", value.split(",")[0].strip())
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Allocation:
    job_id: str
    hostnames: tuple[str, ...]
    gpus_per_node: int | None  # None: a CPU allocation (no GPUs granted)
    tasks_per_node: int | None
    cpus_per_node: int | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Allocation | None:
        job_id = env.get("SLURM_JOB_ID")
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not job_id or not nodelist:
            return None
        hosts = tuple(expand_hostlist(nodelist))
        gpus = _count(env.get("SLURM_GPUS_ON_NODE")) or _count(env.get("SLURM_GPUS_PER_NODE"))
        return cls(
            job_id=job_id,
            hostnames=hosts,
            gpus_per_node=gpus or None,
            tasks_per_node=_count(env.get("SLURM_NTASKS_PER_NODE")),
            cpus_per_node=_count(env.get("SLURM_CPUS_ON_NODE")),
        )

    @property
    def slots_per_node(self) -> int:
        """Rank slots per node: the GPUs, or on a CPU allocation the tasks per node."""
        return self.gpus_per_node or self.tasks_per_node or 1

    def usable(self, excluded: set[str]) -> list[str]:
        return [h for h in self.hostnames if h not in excluded]


def read_exclude_file(path: str | os.PathLike | None) -> set[str]:
    """Hostnames, one per line (``#`` comments and blank lines allowed), as ``sbatch
    --exclude`` takes them after ``paste -sd,``."""
    if not path:
        return set()
    file = Path(path).expanduser()
    if not file.is_file() or file.stat().st_size > MAX_EXCLUDE_BYTES:
        raise OSError(f"not a regular file of at most {MAX_EXCLUDE_BYTES} bytes")
    text = file.read_text()
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}


def exclude_file_problem(key: str, path: Any) -> str | None:
    if path in (None, ""):
        return None
    try:
        read_exclude_file(str(path))
    except UnicodeDecodeError:
        return f"{key}={str(path)!r} is not text; allowed: a file of hostnames, one per line"
    except OSError as exc:
        return (
            f"{key}={str(path)!r} cannot be read ({exc.strerror or exc}); allowed: a file "
            "of hostnames, one per line"
        )
    return None


def resolve(what: str, spare_nodes: Any = 0, exclude_file: Any = None) -> int:
    """The preset's counts from the allocation (0 outside one: validation says why)."""
    alloc = Allocation.from_env(os.environ)
    if alloc is None:
        return 0
    if what == "gpus_per_node":
        return alloc.slots_per_node
    try:
        excluded = read_exclude_file(exclude_file)
        spares = int(spare_nodes)
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return 0  # validation names the bad field
    return max(len(alloc.usable(excluded)) - spares, 0)


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("gosok_slurm"):
        OmegaConf.register_new_resolver("gosok_slurm", resolve)


def allocation_problems(cluster: Any, env: Mapping[str, str], prefix: str = "cluster") -> list[str]:
    """Where a ``kind=slurm`` config disagrees with the allocation it runs in."""
    problem = exclude_file_problem(f"{prefix}.exclude_file", cluster.exclude_file)
    if problem:
        return [problem]
    try:
        alloc = Allocation.from_env(env)
    except HostlistError as exc:
        return [f"SLURM_JOB_NODELIST cannot be read: {exc}"]
    if alloc is None:
        if not cluster.nodes:
            return [
                f"{prefix}.nodes=0: cluster=slurm reads the node count from the Slurm "
                "allocation and this is not inside one (SLURM_JOB_ID is not set); submit with "
                "`sbatch -N <nodes> deploy/slurm/gosok.sbatch <command>`, or set "
                f"{prefix}.nodes for a dry run"
            ]
        return []
    problems = []
    excluded = read_exclude_file(cluster.exclude_file)
    usable = alloc.usable(excluded)
    wanted = cluster.nodes + cluster.spare_nodes
    if wanted != len(usable):
        dropped = len(alloc.hostnames) - len(usable)
        note = f" ({dropped} excluded by {prefix}.exclude_file)" if dropped else ""
        problems.append(
            f"{prefix}.nodes={cluster.nodes} + {prefix}.spare_nodes={cluster.spare_nodes} "
            f"disagrees with the Slurm allocation: job {alloc.job_id} has {len(usable)} usable "
            f"node(s){note}; allowed: nodes + spare_nodes = {len(usable)} (leave "
            f"{prefix}.nodes unset to take them all)"
        )
    if alloc.gpus_per_node:
        if cluster.gpus_per_node != alloc.gpus_per_node:
            problems.append(
                f"{prefix}.gpus_per_node={cluster.gpus_per_node} disagrees with the Slurm "
                f"allocation ({alloc.gpus_per_node} GPU(s) per node); allowed: "
                f"{alloc.gpus_per_node} (leave it unset)"
            )
        if cluster.gpu == "cpu":
            problems.append(
                f"{prefix}.gpu=cpu but the Slurm allocation has {alloc.gpus_per_node} GPU(s) per "
                "node; allowed: the GPU type of the nodes (e.g. cluster.gpu=h200)"
            )
    elif alloc.cpus_per_node and cluster.gpus_per_node > alloc.cpus_per_node:
        problems.append(
            f"{prefix}.gpus_per_node={cluster.gpus_per_node} is more rank slots than the "
            f"{alloc.cpus_per_node} CPU(s) Slurm gave each node; allowed: 1..{alloc.cpus_per_node}"
        )
    return problems
