"""The programme's allocation rules as pure functions (no Ray, no torch).

Rules (the programme's announcements): per project at most 256 H200 GPUs on 32
servers and at most 128 B200 GPUs on 16 servers; 1 H100 = 1 H200 = 4 A100 in allocation
units. Two tracks: the small track is 1-4 H100 GPUs on one server; the server track is
8 or more GPUs as whole 8-GPU servers. Spare nodes count against the allocation. The CPU
fallback (gpu=cpu) is not an allocation, so only the shape is checked there.

Use: ``problems = check_allocation(cluster, track="auto")``; ``track_of(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPUS_PER_SERVER = 8
SMALL_TRACK_MAX_GPUS = 4
SMALL_TRACK_GPUS = ("h100_sxm", "h100_pcie")


@dataclass(frozen=True)
class ProjectLimit:
    max_gpus: int
    max_servers: int
    basis: str


# Types without a published per-project cap (B300, Vera Rubin) are not limited here.
PROJECT_LIMITS: dict[str, ProjectLimit] = {
    "h200": ProjectLimit(256, 32, "H200: up to 256 GPUs (32 servers) per project"),
    "h100_sxm": ProjectLimit(256, 32, "H100 = 1 H200 unit: up to 256 GPUs (32 servers)"),
    "h100_pcie": ProjectLimit(256, 32, "H100 = 1 H200 unit: up to 256 GPUs (32 servers)"),
    "a100": ProjectLimit(1024, 128, "A100 = 1/4 H200 unit: up to 1024 GPUs (128 servers)"),
    "b200": ProjectLimit(128, 16, "B200: up to 128 GPUs (16 servers) per project"),
}


def track_of(gpu: str, nodes: int, gpus_per_node: int, track: str = "auto") -> str:
    """The track a shape runs under: small, server, or none (CPU fallback / rules off)."""
    if track != "auto":
        return track
    if gpu == "cpu":
        return "none"
    world = nodes * gpus_per_node
    return "small" if nodes == 1 and world <= SMALL_TRACK_MAX_GPUS else "server"


def check_allocation(cluster: Any, track: str = "auto") -> list[str]:
    """Every way the cluster's shape breaks the allocation rules; empty when it fits."""
    gpu, nodes, per_node = cluster.gpu, cluster.nodes, cluster.gpus_per_node
    spare = cluster.spare_nodes
    world = nodes * per_node
    problems: list[str] = []
    if nodes < 1 or per_node < 1:
        return [f"cluster shape {nodes} node(s) x {per_node} GPU(s) has no ranks"]
    chosen = track_of(gpu, nodes, per_node, track)
    if chosen == "none":
        return []
    if chosen == "small":
        if gpu not in SMALL_TRACK_GPUS:
            problems.append(
                f"small track is for 1-{SMALL_TRACK_MAX_GPUS} H100 GPUs; cluster.gpu={gpu!r} "
                f"(allowed: {', '.join(SMALL_TRACK_GPUS)}) needs the server track"
            )
        if nodes != 1 or spare:
            problems.append(
                f"small track runs on one server; got cluster.nodes={nodes}, "
                f"cluster.spare_nodes={spare}"
            )
        if world > SMALL_TRACK_MAX_GPUS:
            problems.append(
                f"small track allows 1-{SMALL_TRACK_MAX_GPUS} GPUs; the job asks for {world} "
                f"({nodes} x {per_node}); use whole {GPUS_PER_SERVER}-GPU servers (server track)"
            )
        return problems
    if chosen != "server":
        return [f"allocation.track={chosen!r} is not allowed; allowed: auto, small, server, none"]
    if per_node != GPUS_PER_SERVER:
        hint = (
            f"a job of {world} GPU(s) is between the tracks: small track is 1-"
            f"{SMALL_TRACK_MAX_GPUS} GPUs on one server"
            if world < GPUS_PER_SERVER
            else "set cluster.gpus_per_node=8"
        )
        problems.append(
            f"server track allocates whole {GPUS_PER_SERVER}-GPU servers; "
            f"cluster.gpus_per_node={per_node} ({hint})"
        )
    limit = PROJECT_LIMITS.get(gpu)
    if limit is not None:
        servers = nodes + spare
        gpus = servers * per_node
        if servers > limit.max_servers or gpus > limit.max_gpus:
            problems.append(
                f"{nodes} node(s) + {spare} spare x {per_node} GPUs = {gpus} {gpu} GPUs on "
                f"{servers} server(s) exceeds the per-project limit ({limit.basis}); a "
                "project's launch takes part of the cluster: set cluster.nodes="
                f"{max(min(limit.max_servers, limit.max_gpus // per_node) - spare, 1)}"
                " or fewer (the cluster's own acceptance run: allocation.track=none)"
            )
    return problems


def describe_allocation(cluster: Any, track: str = "auto") -> str:
    """One line for the dry run: track, GPUs, servers, the limit that applies."""
    chosen = track_of(cluster.gpu, cluster.nodes, cluster.gpus_per_node, track)
    servers = cluster.nodes + cluster.spare_nodes
    limit = PROJECT_LIMITS.get(cluster.gpu)
    basis = limit.basis if limit else "no per-project cap for this GPU type"
    if chosen == "none":
        basis = "CPU fallback: programme rules do not apply"
    return (
        f"track={chosen} gpu={cluster.gpu} ranks={cluster.nodes * cluster.gpus_per_node} "
        f"servers={servers} (spare {cluster.spare_nodes}); {basis}"
    )
