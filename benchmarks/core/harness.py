"""What every benchmark driver shares: the run directory, connecting to the cluster,
bringing up the ranks, fingerprinting the nodes, and writing the sealed results file.

Use::

    with bench_session(cfg) as session:          # Ray connected, ranks up
        rows = session.group.run(rank_fn, ...)
    path = write_run_results(kind, cfg, session, payload)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gosok.launcher.cluster.connect import ray_cluster
from gosok.launcher.ranks.fingerprint import driver_fingerprint, per_node_fingerprint
from gosok.launcher.ranks.workers import WorkerGroup
from gosok.launcher.results.run_dir import run_dir
from gosok.launcher.results.store import write_results


@dataclass
class BenchSession:
    group: WorkerGroup
    address: str
    started_cluster: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    started_unix: float = field(default_factory=time.time)

    def placement(self) -> list[dict[str, Any]]:
        return [
            {
                k: info.get(k)
                for k in (
                    "rank",
                    "node_rank",
                    "local_rank",
                    "node_id",
                    "ip",
                    "hostname",
                    "pid",
                    "device_name",
                )
            }
            for info in self.group.rank_info
        ]


@contextlib.contextmanager
def bench_session(cfg: Any, timeout_s: float | None = None) -> Iterator[BenchSession]:
    timeout = timeout_s or cfg.collective_timeout_s
    with ray_cluster(cfg.cluster) as connection, WorkerGroup(cfg.cluster, timeout) as group:
        nodes = [n for n in group.run(per_node_fingerprint) if n is not None]
        yield BenchSession(group, connection.address, connection.started_here, nodes)


def write_run_results(
    kind: str, cfg: Any, session: BenchSession, payload: dict[str, Any], name: str | None = None
) -> Path:
    plan = session.group.plan
    doc = {
        "kind": kind,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "env": {
            "driver": driver_fingerprint(),
            "nodes": session.nodes,
            "ray_address": session.address,
            "placement": session.placement(),
            "plan": plan.summary() if plan else None,
            "process_group_init_seconds": session.group.pg_init_seconds,
        },
        "started_unix": session.started_unix,
        "finished_unix": time.time(),
        **payload,
    }
    path = run_dir() / (name or cfg.output.results_name)
    write_results(path, doc)
    return path
