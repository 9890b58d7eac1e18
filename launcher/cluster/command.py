"""``gosok cluster up|down|status``: manage the local Ray cluster, or inspect any cluster.

up/down apply to ``cluster.kind=local`` (the CPU fallback); status works for both kinds
and lists the nodes Ray sees with their rank slots.

Run: ``gosok cluster up cluster.nodes=3``; ``gosok cluster status``; ``gosok cluster down``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.config.validate import raise_if, validate_cluster
from gosok.launcher.errors import GosokError


def _print_nodes(address: str, console: Any, local_name: str | None = None) -> None:
    import ray

    if local_name:
        local_cluster.use_auth(local_name)
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        for node in ray.nodes():
            if node["Alive"]:
                res = node["Resources"]
                console.print(
                    f"  node {node['NodeID'][:12]} {node['NodeManagerAddress']} "
                    f"slots={int(res.get(local_cluster.SLOT_RESOURCE, 0))} "
                    f"GPU={int(res.get('GPU', 0))} CPU={int(res.get('CPU', 0))}"
                )
    finally:
        ray.shutdown()


AGENTS = """
import ray, sys
from gosok.launcher.ranks.agent import start_cluster_agents
ray.init(address=sys.argv[1], namespace="gosok", logging_level="ERROR", log_to_driver=False)
print(start_cluster_agents())
"""


def bring_up(cluster: Any, say: Callable[[str], None] = print) -> local_cluster.LocalClusterState:
    """``gosok cluster up``: start the local cluster, then its node agents with torch
    imported in their zygotes, so launches on it start warm (a failure of the agents leaves
    launches to start their own). The agents are started from a short-lived process that
    presents the cluster's token (Ray fixes its auth mode when it is first imported)."""
    state = local_cluster.start(cluster)
    env = {**local_cluster.without_token(os.environ), **local_cluster.auth_env(cluster.name)}
    try:
        run = subprocess.run(
            [sys.executable, "-c", AGENTS, state.address],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        say("node agents not started in 600 s; launches start their own")
        return state
    if run.returncode == 0:
        say(f"node agents: {run.stdout.strip()}, torch imported in their zygotes")
    else:  # warmth is an optimisation, never a failure
        why = (run.stderr.strip().splitlines() or ["no detail"])[-1]
        say(f"node agents not started ({why}); launches start their own")
    return state


def run_cluster_command(cfg: Any, console: Any) -> int:
    cluster = cfg.cluster
    raise_if(validate_cluster(cluster))
    action = cfg.action
    if action in ("up", "down") and cluster.kind != "local":
        raise GosokError(
            f"gosok cluster {action} manages local clusters only; "
            f"cluster.kind={cluster.kind!r} is run by its provider"
        )
    if action == "up":
        console.print(f"starting local cluster {cluster.name!r} ({cluster.nodes} node(s)) ...")
        state = bring_up(cluster, console.print)
        console.print(
            f"local cluster {cluster.name!r} up at {state.address}: "
            f"{cluster.nodes} node(s) x {cluster.gpus_per_node} slot(s); "
            f"logs in {state.log_dir}"
        )
        return 0
    if action == "down":
        stopped = local_cluster.stop(cluster.name)
        console.print(
            f"local cluster {cluster.name!r} " + ("stopped" if stopped else "was not running")
        )
        return 0
    if action == "status":
        if cluster.kind == "local":
            state = local_cluster.load_state(cluster.name)
            if not state or not local_cluster.is_running(state):
                console.print(f"local cluster {cluster.name!r}: not running")
                return 1
            address = state.address
        else:
            address = cluster.address
        console.print(f"cluster {cluster.name!r} at {address}:")
        _print_nodes(address, console, cluster.name if cluster.kind == "local" else None)
        return 0
    raise GosokError(f"action={action!r} is not allowed; allowed values: up, down, status")
