"""Ranks on a Ray cluster: one placement group, one actor per rank, torch.distributed up.

``WorkerGroup`` reserves one bundle per node (STRICT_SPREAD, ranks packed per node),
starts one ``RankActor`` per rank, builds the ``Plan`` from the nodes Ray actually chose
(node rank = bundle index, identity = Ray node id, never the IP: local nodes share one),
gives every rank the torchrun environment and initialises the process group (NCCL on GPU,
gloo on CPU). ``run(fn, ...)`` calls ``fn(ctx, ...)`` on every rank with a timeout.
Teardown always happens (context manager): actors killed, placement group removed.

Use::

    with WorkerGroup(cluster_cfg, timeout_s=120) as group:
        results = group.run(my_rank_fn, arg)       # list, index = rank
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gosok.launcher.cluster.local import SLOT_RESOURCE, free_port
from gosok.launcher.errors import ClusterMismatchError, CollectiveTimeoutError
from gosok.launcher.ledger.sampler import SamplingSlot
from gosok.launcher.ranks.plan import NodeSlot, Plan, backend_for, make_plan

NODE_ID_LABEL = "ray.io/node-id"
PLACEMENT_POLL_S = 2.0


@dataclass
class RankContext:
    """What a rank function receives: its place in the world and its device."""

    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    node_id: str
    hostname: str
    device: str
    backend: str
    groups: dict[tuple[int, ...], Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def torch_device(self):
        import torch

        return torch.device(self.device)

    def group_for(self, groups: list[list[int]]) -> tuple[int, Any] | tuple[None, None]:
        """Create (once, in the same order on every rank) the process groups for
        ``groups`` and return (group index, handle) for the one this rank is in."""
        import torch.distributed as dist

        mine: tuple[int, Any] | tuple[None, None] = (None, None)
        for index, members in enumerate(groups):
            key = tuple(members)
            if key not in self.groups:
                if len(key) == self.world_size:
                    self.groups[key] = dist.group.WORLD
                else:
                    self.groups[key] = dist.new_group(list(key))
            if self.rank in key:
                mine = (index, self.groups[key])
        return mine


@ray.remote
class RankActor:
    """One rank: holds its process group and runs functions sent by the driver."""

    def __init__(self) -> None:
        self.ctx: RankContext | None = None
        self.sampling = SamplingSlot()

    def describe(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def free_port(self) -> int:
        return free_port("")

    def setup(self, env: dict[str, str], placement: dict[str, Any]) -> dict[str, Any]:
        os.environ.update(env)
        device = "cpu"
        info: dict[str, Any] = {}
        if placement["backend"] == "nccl":
            import torch

            torch.cuda.set_device(placement["local_rank"])
            device = f"cuda:{placement['local_rank']}"
            info["device_name"] = torch.cuda.get_device_name()
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        self.ctx = RankContext(
            rank=placement["rank"],
            local_rank=placement["local_rank"],
            node_rank=placement["node_rank"],
            world_size=placement["world_size"],
            local_world_size=placement["local_world_size"],
            node_id=placement["node_id"],
            hostname=socket.gethostname(),
            device=device,
            backend=placement["backend"],
        )
        return info

    def init_process_group(self, timeout_s: float) -> float:
        import time

        import torch.distributed as dist

        assert self.ctx is not None
        start = time.perf_counter()
        dist.init_process_group(
            backend=self.ctx.backend,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        return time.perf_counter() - start

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self.ctx is not None, "setup() must run before call()"
        return fn(self.ctx, *args, **kwargs)

    def start_sampler(
        self, interval_s: float, node: str, cluster: str, job_id: str, pids: Any = None
    ) -> None:
        """Sample this node's utilisation (the goodput ledger) until drained with stop;
        ``pids``: the job's rank processes here, whose CPU share is measured."""
        self.sampling.start(interval_s, node, cluster, job_id, pids)

    def drain_samples(self, stop: bool = False) -> list[dict[str, Any]]:
        return self.sampling.drain(stop)

    def shutdown(self) -> None:
        # An actor that only started a rank's process never imported torch: do not pay
        # for importing it (seconds) just to find no process group.
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


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


def _held_by_others(bundle: dict[str, float]) -> tuple[float, float] | None:
    """(free, total) of the bundle's resource when part of it is held (by another job);
    None when all of it is free."""
    (key,) = bundle
    total = ray.cluster_resources().get(key, 0.0)
    free = ray.available_resources().get(key, 0.0)
    return (free, total) if free < total else None


def wait_placed(pg: Any, bundle: dict[str, float], nodes: int, timeout_s: float) -> None:
    """Wait until the placement group is placed. While slots are held by another job (a
    second command on the same cluster), wait for them and say so once, as Slurm's srun
    does ("queued and waiting for resources"); a group that stays unplaced although every
    slot is free is refused after ``timeout_s`` (the request does not fit)."""
    ready = pg.ready()
    deadline = time.monotonic() + min(timeout_s, 120)
    said = False
    while not ray.wait([ready], timeout=PLACEMENT_POLL_S)[0]:
        held = _held_by_others(bundle)
        if held is not None:
            deadline = time.monotonic() + min(timeout_s, 120)
            if not said:
                key, per_node = next(iter(bundle.items()))
                print(
                    f"waiting for resources: {nodes} node(s) x {per_node:g} {key}; another "
                    f"job holds {held[1] - held[0]:g} of the cluster's {held[1]:g} ...",
                    flush=True,
                )
                said = True
        elif time.monotonic() > deadline:
            raise ClusterMismatchError(
                f"could not place {nodes} bundle(s) of {bundle} on distinct nodes within "
                f"{min(timeout_s, 120):g}s although the cluster's slots are free (too few "
                "nodes that fit, or the nodes it may use are excluded)"
            )
    ray.get(ready)


class WorkerGroup:
    """A placement group + one actor per rank + initialised process groups."""

    def __init__(
        self,
        cluster: Any,
        timeout_s: float = 300.0,
        extra_env: dict[str, str] | None = None,
        exclude_node_ids: tuple[str, ...] = (),
        actor_options: dict[str, Any] | None = None,
        init_process_group: bool = True,
        shutdown_timeout_s: float = 10.0,
        pin_nodes: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.cluster = cluster
        # Node ranks on exactly these nodes, in this order (see ``pinned_node_ids``).
        self.pin_nodes = tuple(pin_nodes)
        # False: ranks get the torchrun env but no process group (a child process they
        # start, e.g. a user script, creates its own on MASTER_ADDR:MASTER_PORT).
        self.init_process_group = init_process_group
        self.shutdown_timeout_s = shutdown_timeout_s
        self.backend = backend_for(cluster.gpu)
        self.timeout_s = timeout_s
        self.extra_env = dict(extra_env or {})
        self.exclude_node_ids = tuple(exclude_node_ids)
        self.actor_options = dict(actor_options or {})
        self.pg = None
        self.actors: list[Any] = []
        self.plan: Plan | None = None
        self.rank_info: list[dict[str, Any]] = []
        self.pg_init_seconds: float = 0.0

    def __enter__(self) -> WorkerGroup:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        # On Ctrl-C the ranks may be deep in a timed loop: kill them, do not wait.
        self.shutdown(graceful=exc_type is not KeyboardInterrupt)

    def _bundle(self) -> dict[str, float]:
        per_node = self.cluster.gpus_per_node
        if self.backend == "nccl":
            return {"GPU": float(per_node)}
        return {SLOT_RESOURCE: float(per_node)}

    def _rank_resources(self) -> dict[str, Any]:
        if self.backend == "nccl":
            return {"num_gpus": 1, "num_cpus": 0}
        return {"num_cpus": 0, "resources": {SLOT_RESOURCE: 1}}

    def start(self) -> Plan:
        cluster = self.cluster
        check_cluster(cluster, self.backend, self.exclude_node_ids)
        selector = None
        if self.pin_nodes:
            pinned = pinned_node_ids(list(self.pin_nodes), alive_nodes())
            selector = [{NODE_ID_LABEL: node_id} for node_id in pinned]
        elif self.exclude_node_ids:
            excluded = ",".join(self.exclude_node_ids)
            selector = [{NODE_ID_LABEL: f"!in({excluded})"}] * cluster.nodes
        self.pg = placement_group(
            [self._bundle()] * cluster.nodes,
            strategy="STRICT_SPREAD",
            bundle_label_selector=selector,
        )
        wait_placed(self.pg, self._bundle(), cluster.nodes, self.timeout_s)
        bundle_nodes = ray.util.placement_group_table(self.pg)["bundles_to_node_id"]
        per_node = cluster.gpus_per_node
        for node_rank in range(cluster.nodes):
            for _ in range(per_node):
                strategy = PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=node_rank
                )
                options = {**self._rank_resources(), **self.actor_options}
                actor = RankActor.options(scheduling_strategy=strategy, **options).remote()
                self.actors.append(actor)
        described = self._get([a.describe.remote() for a in self.actors], "describe ranks")
        nodes = []
        for node_rank in range(cluster.nodes):
            first = described[node_rank * per_node]
            if first["node_id"] != bundle_nodes[node_rank]:
                raise ClusterMismatchError("rank actor landed outside its placement bundle")
            nodes.append(NodeSlot(first["node_id"], first["ip"], first["hostname"]))
        master_port = self._get([self.actors[0].free_port.remote()], "pick master port")[0]
        plan = make_plan(nodes, per_node, master_port, self.backend, self.extra_env)
        self.plan = plan
        setups = []
        for spec, actor, info in zip(plan.ranks, self.actors, described, strict=True):
            env = dict(spec.env)
            if self.backend == "nccl":
                node_gpus = sorted(
                    {
                        g
                        for d in described[
                            spec.node_rank * per_node : (spec.node_rank + 1) * per_node
                        ]
                        for g in d["gpu_ids"]
                    },
                    key=int,
                )
                env["CUDA_VISIBLE_DEVICES"] = ",".join(node_gpus)
            placement = {
                "rank": spec.rank,
                "local_rank": spec.local_rank,
                "node_rank": spec.node_rank,
                "world_size": plan.world_size,
                "local_world_size": per_node,
                "node_id": spec.node_id,
                "backend": self.backend,
            }
            setups.append(actor.setup.remote(env, placement))
            info.update(rank=spec.rank, node_rank=spec.node_rank, local_rank=spec.local_rank)
        for info, extra in zip(described, self._get(setups, "set up ranks"), strict=True):
            info.update(extra)
        self.rank_info = described
        self._check_gpu_model()
        if not self.init_process_group:
            return plan
        init_times = self._get(
            [a.init_process_group.remote(self.timeout_s) for a in self.actors],
            "init process group",
        )
        self.pg_init_seconds = max(init_times)
        return plan

    def _check_gpu_model(self) -> None:
        if self.backend != "nccl":
            return
        from gosok.launcher.config.catalogue import gpu_spec

        spec = gpu_spec(self.cluster.gpu)
        wrong = [
            i
            for i in self.rank_info
            if not any(m in i.get("device_name", "") for m in spec.device_name_match)
        ]
        if wrong:
            found = sorted({i.get("device_name", "?") for i in wrong})
            raise ClusterMismatchError(
                f"cluster.gpu={self.cluster.gpu!r} expects {spec.name}, but "
                f"{len(wrong)} rank(s) found {found}"
            )

    def _get(self, refs: list[Any], what: str, timeout_s: float | None = None) -> list[Any]:
        return get_all(refs, what, self.timeout_s if timeout_s is None else timeout_s)

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """Call ``fn(ctx, *args, **kwargs)`` on every rank; results indexed by rank."""
        refs = [a.call.remote(fn, *args, **kwargs) for a in self.actors]
        return self._get(refs, getattr(fn, "__name__", "rank function"), timeout_s)

    def shutdown(self, graceful: bool = True) -> None:
        """Kill every actor and remove the placement group; safe to call twice. Graceful:
        first let each actor leave its process group (up to ``shutdown_timeout_s``)."""
        if self.actors and graceful:
            with contextlib.suppress(Exception):
                ray.get([a.shutdown.remote() for a in self.actors], timeout=self.shutdown_timeout_s)
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None
