"""``gosok cluster up|down|status``: manage the local Ray cluster, or inspect any cluster.

up/down apply to ``cluster.kind=local`` (the CPU fallback); status works for both kinds
and lists the nodes Ray sees with their rank slots.

Run: ``gosok cluster up cluster.nodes=3``; ``gosok cluster status``; ``gosok cluster down``.
"""

from __future__ import annotations

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


def _start_agents(address: str, name: str, console: Any) -> None:
    """The cluster's node agents, with torch imported in their zygotes, so launches on it
    start warm; a failure here leaves launches to start their own agents."""
    import ray

    from gosok.launcher.ranks.agent import start_cluster_agents

    local_cluster.use_auth(name)
    ray.init(address=address, namespace="gosok", logging_level="ERROR", log_to_driver=False)
    try:
        count = start_cluster_agents()
        console.print(f"node agents: {count}, torch imported in their zygotes")
    except Exception as err:  # noqa: BLE001  (warmth is an optimisation, never a failure)
        console.print(
            f"node agents not started ({type(err).__name__}: {err}); launches start their own"
        )
    finally:
        ray.shutdown()


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
        state = local_cluster.start(cluster)
        console.print(
            f"local cluster {cluster.name!r} up at {state.address}: "
            f"{cluster.nodes} node(s) x {cluster.gpus_per_node} slot(s); "
            f"logs in {state.log_dir}"
        )
        _start_agents(state.address, cluster.name, console)
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
