"""Connect the driver to the cluster a config names: a running Ray cluster by address,
or the local one (reused if ``gosok cluster up`` started it, else started for this run).

Use::

    with ray_cluster(cfg.cluster) as info:   # ray is initialised inside the block
        ...

One connection per process: a running cluster (one this block did not start) stays
connected after the block, so the next block in the same process (a ``-m`` sweep, a
restart) does not connect again; the connection closes when the process exits. A local
cluster no ``gosok cluster up`` started is disconnected at the block's end (its last user
stops it). ``ray`` is imported
only here, inside the functions, so a command that refuses its input never loads it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.errors import ConfigError

TASK_EVENTS_ENV = "RAY_task_events_report_interval_ms"
_connected: list[str] = []  # the address this process connected to here, if any
_exit_hook: list[bool] = []


@dataclass
class ClusterConnection:
    address: str
    ephemeral: bool  # a command's own local cluster (stopped when its last user ends)


def connected() -> bool:
    """Whether this process connected to a Ray cluster here and still is."""
    return bool(_connected)


def _disconnect() -> None:
    import ray

    _connected.clear()
    with contextlib.suppress(Exception):
        ray.shutdown()


def _init(address: str) -> None:
    """Connect to ``address`` unless this process already is."""
    import ray

    if _connected:
        if _connected == [address] and ray.is_initialized():
            return
        _disconnect()
    # The driver reports no task events (Ray's timeline of its own calls to actors): flushing
    # them makes every disconnect take 0.2-0.3 s. Read once, by ray.init; a value the user
    # set wins.
    saved = os.environ.get(TASK_EVENTS_ENV)
    os.environ.setdefault(TASK_EVENTS_ENV, "0")
    try:
        ray.init(address=address, namespace="gosok", logging_level="ERROR", log_to_driver=True)
    finally:
        if saved is None:
            os.environ.pop(TASK_EVENTS_ENV, None)
    _connected[:] = [address]
    if not _exit_hook:
        # Disconnect before Ray's own exit hook, which waits half a second for log lines.
        atexit.register(lambda: _connected and _disconnect())
        _exit_hook.append(True)


@contextlib.contextmanager
def ray_cluster(cluster: Any) -> Iterator[ClusterConnection]:
    if cluster.kind == "local":
        # Present the local cluster's token (Ray reads it when it is first imported).
        local_cluster.use_auth(cluster.name)
        with local_cluster.local_cluster(cluster) as (address, ephemeral):
            _init(address)
            try:
                yield ClusterConnection(address, ephemeral)
            finally:
                if ephemeral:
                    _disconnect()
        return
    if not cluster.address:
        # kind=slurm: deploy/slurm/gosok.sbatch starts Ray and passes its address.
        raise ConfigError(
            [
                "cluster.address is not set: cluster=slurm runs on the Ray cluster that "
                "`sbatch deploy/slurm/gosok.sbatch <command>` starts in the allocation"
            ]
        )
    _init(cluster.address)
    yield ClusterConnection(cluster.address, False)
