"""The launch plan: which rank runs on which node with which environment.

Pure data and pure functions (no Ray, no torch.distributed), so a plan for 510 nodes x 8
GPUs can be built and checked on a laptop. The Ray layer builds the same plan from the
nodes its placement group landed on; ``gosok ... dry_run=true`` prints it from synthetic
node names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSlot:
    """A node as the plan sees it: Ray node id (the identity), IP and hostname."""

    node_id: str
    ip: str
    hostname: str = ""


@dataclass(frozen=True)
class RankSpec:
    rank: int
    local_rank: int
    node_rank: int
    node_id: str
    node_ip: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    world_size: int
    ranks_per_node: int
    backend: str
    master_addr: str
    master_port: int
    nodes: tuple[NodeSlot, ...]
    ranks: tuple[RankSpec, ...]

    def ranks_on_node(self, node_rank: int) -> list[RankSpec]:
        start = node_rank * self.ranks_per_node
        return list(self.ranks[start : start + self.ranks_per_node])

    def summary(self) -> dict:
        return {
            "world_size": self.world_size,
            "nodes": len(self.nodes),
            "ranks_per_node": self.ranks_per_node,
            "backend": self.backend,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
        }


def backend_for(gpu_key: str) -> str:
    """torch.distributed backend for a catalogue GPU key: gloo on the CPU fallback."""
    return "gloo" if gpu_key == "cpu" else "nccl"


def synthetic_nodes(count: int) -> list[NodeSlot]:
    """Placeholder nodes for a dry run, before Ray has placed anything."""
    width = max(3, len(str(count - 1)))
    return [NodeSlot(node_id=f"node-{i:0{width}d}", ip=f"<ip of node {i}>") for i in range(count)]


def torchrun_env(
    rank: int,
    local_rank: int,
    node_rank: int,
    world_size: int,
    local_world_size: int,
    master_addr: str,
    master_port: int,
    nodes: int | None = None,
) -> dict[str, str]:
    """The environment torchrun gives each rank, so unchanged scripts just work (torch's
    ``local_elastic_agent.py``: one role, ``default``; the restart and run-id variables are
    the launch's, ``launch.command.torchelastic_env``)."""
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
        "GROUP_WORLD_SIZE": str(nodes or world_size // max(local_world_size, 1)),
        "ROLE_NAME": "default",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "TORCHELASTIC_USE_AGENT_STORE": "False",
    }


def make_plan(
    nodes: list[NodeSlot],
    ranks_per_node: int,
    master_port: int,
    backend: str,
    extra_env: dict[str, str] | None = None,
) -> Plan:
    """Pack ranks node by node: node k holds ranks k*R .. k*R+R-1; rank 0's node is master."""
    if not nodes:
        raise ValueError("a plan needs at least one node")
    if ranks_per_node < 1:
        raise ValueError(f"ranks_per_node={ranks_per_node} must be >= 1")
    if len({n.node_id for n in nodes}) != len(nodes):
        raise ValueError("node ids in a plan must be unique")
    if not 0 < master_port < 65536:
        raise ValueError(f"master_port={master_port} must be in 1..65535")
    world_size = len(nodes) * ranks_per_node
    master_addr = nodes[0].ip
    ranks = []
    for node_rank, node in enumerate(nodes):
        for local_rank in range(ranks_per_node):
            rank = node_rank * ranks_per_node + local_rank
            env = torchrun_env(
                rank, local_rank, node_rank, world_size, ranks_per_node, master_addr, master_port,
                len(nodes),
            )  # fmt: skip
            env.update(extra_env or {})
            ranks.append(RankSpec(rank, local_rank, node_rank, node.node_id, node.ip, env))
    return Plan(
        world_size, ranks_per_node, backend, master_addr, master_port, tuple(nodes), tuple(ranks)
    )


def rank_groups(plan: Plan, scope: str) -> list[list[int]]:
    """Groups of ranks that measure together for a benchmark scope.

    all: the whole world; intra_node: one group per node (all measured at once);
    inter_node: one rank per node (local rank 0), so only the network is crossed.
    """
    if scope == "all":
        return [list(range(plan.world_size))]
    if scope == "intra_node":
        return [[r.rank for r in plan.ranks_on_node(n)] for n in range(len(plan.nodes))]
    if scope == "inter_node":
        return [[r.rank for r in plan.ranks if r.local_rank == 0]]
    raise ValueError(f"unknown scope {scope!r}; allowed: all, intra_node, inter_node")


SPLIT = re.compile(r"^(mod|div):([1-9][0-9]*)$")


def split_groups(world_size: int, split: str) -> list[list[int]]:
    """The rank groups ``NCCL_TESTS_SPLIT`` makes, all measured at once: ``mod:k`` puts
    rank r in group r % k (with k GPUs per node: one group per rail, one GPU of every node
    in each), ``div:k`` in group r // k (with k GPUs per node: each node alone)."""
    found = SPLIT.match(split)
    if not found:
        raise ValueError(f"split {split!r} is not mod:<k> or div:<k>")
    how, k = found.group(1), int(found.group(2))
    colour = (lambda r: r % k) if how == "mod" else (lambda r: r // k)
    groups: dict[int, list[int]] = {}
    for rank in range(world_size):
        groups.setdefault(colour(rank), []).append(rank)
    return [groups[c] for c in sorted(groups)]


def node_subset_groups(plan: Plan, node_groups: list[list[int]]) -> list[list[int]]:
    """Rank groups for arbitrary disjoint sets of node ranks (used by isolation rounds)."""
    seen: set[int] = set()
    groups = []
    for nodes in node_groups:
        if seen & set(nodes):
            raise ValueError("node groups measured in one round must be disjoint")
        seen |= set(nodes)
        groups.append([r.rank for n in nodes for r in plan.ranks_on_node(n)])
    return groups
