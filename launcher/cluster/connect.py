"""Connect the driver to the cluster a config names: a running Ray cluster by address,
or the local one (reused if ``gosok cluster up`` started it, else started for this run).

Use::

    with ray_cluster(cfg.cluster) as info:   # ray is initialised inside the block
        ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

from gosok.launcher.cluster import local as local_cluster


@dataclass
class ClusterConnection:
    address: str
    started_here: bool


def _init(address: str) -> None:
    ray.init(address=address, namespace="gosok", logging_level="ERROR", log_to_driver=True)


@contextlib.contextmanager
def ray_cluster(cluster: Any) -> Iterator[ClusterConnection]:
    if cluster.kind == "local":
        # Local nodes run without Ray's auth token (see local_cluster.ray_env).
        os.environ["RAY_AUTH_MODE"] = "disabled"
        with local_cluster.local_cluster(cluster) as (address, started):
            _init(address)
            try:
                yield ClusterConnection(address, started)
            finally:
                ray.shutdown()
        return
    _init(cluster.address)
    try:
        yield ClusterConnection(cluster.address, False)
    finally:
        ray.shutdown()
