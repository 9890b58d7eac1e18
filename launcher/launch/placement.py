"""Where a launch's or a benchmark's ranks go on the Ray cluster: one STRICT_SPREAD
placement group with one bundle per node (``cluster.gpus_per_node`` GPUs, or gosok's CPU
rank slots), checked against the live nodes first, optionally kept off some nodes (the
blocklist) or pinned to given ones (a spot check re-measures the nodes a results file
names), waited for while another job holds the slots.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group

from gosok.launcher.cluster.local import SLOT_RESOURCE
from gosok.launcher.errors import ClusterMismatchError, CollectiveTimeoutError

NODE_ID_LABEL = "ray.io/node-id"
PLACEMENT_POLL_S = 2.0


def bundle(backend: str, per_node: int) -> dict[str, float]:
    return {"GPU": float(per_node)} if backend == "nccl" else {SLOT_RESOURCE: float(per_node)}


def reserve(
    cluster: Any,
    backend: str,
    exclude_node_ids: tuple[str, ...] = (),
    pin_nodes: tuple[dict[str, Any], ...] = (),
) -> Any:
    """The placement group for ``cluster.nodes`` x ``cluster.gpus_per_node`` (not yet
    placed: ``wait_placed``), after ``check_cluster``; node rank i on the i-th of
    ``pin_nodes`` when given (see ``pinned_node_ids``)."""
    check_cluster(cluster, backend, exclude_node_ids)
    selector = None
    if pin_nodes:
        pinned = pinned_node_ids(list(pin_nodes), alive_nodes())
        selector = [{NODE_ID_LABEL: node_id} for node_id in pinned]
    elif exclude_node_ids:
        selector = [{NODE_ID_LABEL: f"!in({','.join(exclude_node_ids)})"}] * cluster.nodes
    return placement_group(
        [bundle(backend, cluster.gpus_per_node)] * cluster.nodes,
        strategy="STRICT_SPREAD",
        bundle_label_selector=selector,
    )


def get_all(refs: list[Any], what: str, timeout_s: float) -> list[Any]:
    """Every answer, or ``CollectiveTimeoutError`` naming what did not answer in time."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError as err:
        raise CollectiveTimeoutError(f"{what}: no answer from all in {timeout_s}s") from err


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]


def slots_of(node: dict[str, Any], backend: str) -> int:
    resources = node["Resources"]
    if backend == "nccl":
        return int(resources.get("GPU", 0))
    return int(resources.get(SLOT_RESOURCE, 0))


def pinned_node_ids(wanted: list[dict[str, Any]], alive: list[dict[str, Any]]) -> list[str]:
    """The live Ray node of each wanted node (a results file's ``{node_id, ip, hostname}``):
    the same node id while the cluster that measured it still runs, else the one live node
    with that hostname, else the one with that address. ``ClusterMismatchError`` names a
    node that matches none, or more than one."""
    ids = {n["NodeID"] for n in alive}
    found = []
    for node in wanted:
        if node.get("node_id") in ids:
            found.append(node["node_id"])
            continue
        for mine, theirs in (("hostname", "NodeManagerHostname"), ("ip", "NodeManagerAddress")):
            value = node.get(mine)
            same = [n["NodeID"] for n in alive if value and n.get(theirs) == value]
            if len(same) == 1:
                found.append(same[0])
                break
        else:
            raise ClusterMismatchError(
                f"node {node.get('hostname')!r} ({node.get('ip')}) is not one live node of this "
                f"Ray cluster (by node id, hostname or address)"
            )
    if len(set(found)) != len(found):
        raise ClusterMismatchError(f"two wanted nodes are the same Ray node: {wanted}")
    return found


def check_cluster(cluster: Any, backend: str, exclude_node_ids: tuple[str, ...] = ()) -> None:
    """Refuse clearly when the Ray cluster cannot host cluster.nodes x cluster.gpus_per_node."""
    unit = "GPU" if backend == "nccl" else f"'{SLOT_RESOURCE}' slots"
    nodes = [n for n in alive_nodes() if n["NodeID"] not in exclude_node_ids]
    fitting = [n for n in nodes if slots_of(n, backend) >= cluster.gpus_per_node]
    if len(fitting) < cluster.nodes:
        seen = (
            ", ".join(
                f"{n['NodeID'][:8]}@{n['NodeManagerAddress']}={slots_of(n, backend)}" for n in nodes
            )
            or "none"
        )
        raise ClusterMismatchError(
            f"cluster {cluster.name!r} asks for {cluster.nodes} node(s) with "
            f"{cluster.gpus_per_node} {unit} each, but the Ray cluster has only "
            f"{len(fitting)} such node(s) alive (nodes: {seen}). Fix cluster.nodes / "
            f"cluster.gpus_per_node or the cluster."
        )


def _held_by_others(wanted: dict[str, float]) -> tuple[float, float] | None:
    """(free, total) of the bundle's resource when part of it is held (by another job);
    None when all of it is free."""
    (key,) = wanted
    total = ray.cluster_resources().get(key, 0.0)
    free = ray.available_resources().get(key, 0.0)
    return (free, total) if free < total else None


def wait_placed(pg: Any, wanted: dict[str, float], nodes: int, timeout_s: float) -> None:
    """Wait until the placement group is placed. While slots are held by another job (a
    second command on the same cluster), wait for them and say so once, as Slurm's srun
    does ("queued and waiting for resources"); a group that stays unplaced although every
    slot is free is refused after ``timeout_s`` (the request does not fit)."""
    ready = pg.ready()
    deadline = time.monotonic() + min(timeout_s, 120)
    said = False
    while not ray.wait([ready], timeout=PLACEMENT_POLL_S)[0]:
        held = _held_by_others(wanted)
        if held is not None:
            deadline = time.monotonic() + min(timeout_s, 120)
            if not said:
                key, per_node = next(iter(wanted.items()))
                print(
                    f"waiting for resources: {nodes} node(s) x {per_node:g} {key}; another "
                    f"job holds {held[1] - held[0]:g} of the cluster's {held[1]:g} ...",
                    flush=True,
                )
                said = True
        elif time.monotonic() > deadline:
            raise ClusterMismatchError(
                f"could not place {nodes} bundle(s) of {wanted} on distinct nodes within "
                f"{min(timeout_s, 120):g}s although the cluster's slots are free (too few "
                "nodes that fit, or the nodes it may use are excluded)"
            )
    ray.get(ready)
