"""Is the checkpoint directory storage every node sees? Checked once at start: the driver
writes a token file there and every alive node of the cluster must read it back. A
directory only one node sees (a run dir on a local disk, a private /tmp) would let a
restarted job resume on another node from nothing, or from a different step.

Use (with Ray connected): ``problem = shared_storage_problem(path)`` — None when every
node sees ``path``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_PREFIX = ".gosok-visible-"


def _read_token(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def shared_storage_problem(directory: Path, timeout_s: float = 60.0) -> str | None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = directory / f"{TOKEN_PREFIX}{token[:12]}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    try:
        reader = ray.remote(num_cpus=0)(_read_token)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        refs = [
            reader.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(path))
            for n in nodes
        ]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        seen: list[str | None] = []
        for ref in refs:
            try:
                seen.append(ray.get(ref, timeout=0))
            except ray.exceptions.RayError:
                seen.append(None)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        path.unlink(missing_ok=True)
    blind = [
        f"{n['NodeManagerAddress']} ({n['NodeID'][:12]})"
        for n, got in zip(nodes, seen, strict=True)
        if got != token and n["NodeID"] in alive  # a node that died meanwhile is not asked
    ]
    if blind:
        return (
            f"checkpoint.dir={str(directory)!r} is not storage every node sees: "
            f"{len(blind)} of {len(nodes)} node(s) cannot read a file written there "
            f"({', '.join(blind[:4])}); set checkpoint.dir to shared storage (NFS, Lustre, ...)"
        )
    return None
