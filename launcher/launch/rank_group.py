"""The driver's side of ``gosok launch``'s ranks: one node agent per node for the life of
the launch (``AgentPool``) and, per attempt, one ``RankGroup``: a placement group with one
STRICT_SPREAD bundle per node, the ranks started by the agents of the bundles' nodes, and
one report per node per poll.

Ranks start warm (forked from the agent's zygote, torch imported) unless the launch asks
for fresh interpreters (``launch.fresh_process=true``) or the zygote cannot serve the job
(another ``job.python``, a ``job.env`` that sets an interpreter start-up variable, a
failed preload): then the same agents start fresh interpreters and the attempt says why in
one line. On GPU nodes the ranks see the GPUs Ray gave the placement bundle
(``CUDA_VISIBLE_DEVICES``), so part of a node can be allocated.

Use (the supervisor does this)::

    agents = AgentPool()                       # once per launch
    group = RankGroup(agents, cluster, env, WarmNeeds(preload=("torch",)), timeout_s=120)
    group.start()                              # placement group + the nodes' zygotes
    print(group.start_line())                  # "ranks: warm start ..." / "ranks: fresh ..."
    placement = group.spawn(spawn_spec)        # one dict per rank
    reports, dead = group.poll(wait_s=0.5)     # one report per node; early when a rank exits
    group.shutdown(); agents.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gosok.launcher.errors import (
    ENVIRONMENT_ERRORS,
    ClusterMismatchError,
    RankStartError,
)
from gosok.launcher.launch.placement import (
    alive_nodes,
    bundle,
    get_all,
    reserve,
    slots_of,
    wait_placed,
)
from gosok.launcher.ranks import agent as node_agent
from gosok.launcher.ranks.agent import WarmNeeds
from gosok.launcher.ranks.plan import NodeSlot, Plan, backend_for, make_plan

PREPARE_TIMEOUT_S = 600.0  # a first preload of torch + DeepSpeed on a busy node
REPORT_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0


class AgentPool:
    """The launch's node agents, by node id: the cluster's own where it runs this gosok's
    code, else one this launch starts. ``keep`` (a local cluster, which gosok owns): what
    it starts is the cluster's, for the launches after it (a sweep, a second command);
    else the launch ends its own (``close``)."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.agents: dict[str, Any] = {}
        self.own: list[Any] = []
        self.note = ""  # why the cluster's agents were not used
        self._code = node_agent.code_fingerprint()

    def get(self, node_id: str) -> Any:
        return self.ensure([node_id])[0]

    def ensure(self, node_ids: list[str]) -> list[Any]:
        """The agents of ``node_ids``; the cluster's agents found are asked for their code
        version all at once."""
        missing = [n for n in dict.fromkeys(node_ids) if n not in self.agents]
        kept = {n: node_agent.cluster_agent(n) for n in missing}
        asked = {n: a.describe.remote() for n, a in kept.items() if a is not None}
        refs = list(asked.values())
        ready = ray.wait(refs, num_returns=len(refs), timeout=30)[0] if refs else []
        for node_id in missing:
            handle, ref = kept[node_id], asked.get(node_id)
            if handle is not None and not self._runs_our_code(ref, ready):
                self.note = (
                    "the cluster's node agents run other gosok code (`gosok cluster down` "
                    "and `up` renews them)"
                )
                handle = None
            if handle is None and self.keep and not self.note:
                handle = node_agent.new_agent(node_id, kept=True)
            elif handle is None:
                handle = node_agent.new_agent(node_id)
                self.own.append(handle)
            self.agents[node_id] = handle
        return [self.agents[n] for n in node_ids]

    def _runs_our_code(self, ref: Any, ready: list[Any]) -> bool:
        try:  # an agent of any other version, or one that does not answer, is not used
            return ref in ready and ray.get(ref).get("code") == self._code
        except Exception:  # noqa: BLE001
            return False

    def forget(self, node_id: str) -> None:
        """A node found dead: its agent is not asked again."""
        self.agents.pop(node_id, None)

    def close(self) -> None:
        stops = [a.stop.remote() for a in self.own]
        with contextlib.suppress(Exception):
            ray.wait(stops, num_returns=len(stops), timeout=15)
        for handle in self.own:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self.own.clear()
        self.agents.clear()


@ray.remote(num_cpus=0)
def _bundle_gpu_ids() -> list[str]:
    return [str(i) for i in ray.get_gpu_ids()]


class RankGroup:
    """One attempt's ranks, started by the agents of the placement group's nodes."""

    def __init__(
        self,
        agents: AgentPool,
        cluster: Any,
        extra_env: dict[str, str],
        needs: WarmNeeds,
        job_env: dict[str, str] | None = None,
        fresh_process: bool = False,
        timeout_s: float = 120.0,
        exclude_node_ids: tuple[str, ...] = (),
        pin_nodes: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.pool = agents
        self.cluster = cluster
        self.extra_env = dict(extra_env)
        self.needs = dataclasses.replace(needs, fresh=fresh_process)
        self.job_env = dict(job_env or {})
        self.timeout_s = timeout_s
        self.exclude_node_ids = tuple(exclude_node_ids)
        self.pin_nodes = tuple(pin_nodes)
        self.reason = "launch.fresh_process=true" if fresh_process else ""
        self.backend = backend_for(cluster.gpu)
        self.job_key = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.pg = None
        self.plan: Plan | None = None
        self.agents: list[Any] = []  # by node rank
        self.rank_info: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.zygotes_started = 0
        self._gpu_ids: list[list[str]] = []
        self._spawned = False
        self._asking: dict[Any, int] = {}  # report requests out: ref -> node rank
        self._gone: set[int] = set()  # node ranks whose agent is gone

    @property
    def mode(self) -> str:
        return "fresh" if self.needs.fresh else "warm"

    @property
    def world(self) -> int:
        return self.cluster.nodes * self.cluster.gpus_per_node

    def start(self) -> Plan:
        cluster = self.cluster
        started = time.perf_counter()
        self.pg = reserve(cluster, self.backend, self.exclude_node_ids, self.pin_nodes)
        early = self._prepare_known_nodes()
        wait_placed(
            self.pg, bundle(self.backend, cluster.gpus_per_node), cluster.nodes, self.timeout_s
        )
        table = ray.util.placement_group_table(self.pg)["bundles_to_node_id"]
        node_ids = [table[i] for i in range(cluster.nodes)]
        self.timings["placement_group_s"] = time.perf_counter() - started
        mark = time.perf_counter()
        self.agents = self.pool.ensure(node_ids)
        refs = [early.get(n) or self._prepare(n) for n in node_ids]
        if self.backend == "nccl":
            self._gpu_ids = self._get(
                [
                    _bundle_gpu_ids.options(
                        num_gpus=cluster.gpus_per_node,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, index),
                    ).remote()
                    for index in range(cluster.nodes)
                ],
                "read the bundles' GPU ids",
            )
        described = self._get(refs, "start zygotes", max(self.timeout_s, PREPARE_TIMEOUT_S))
        self.timings["warm_servers_s"] = time.perf_counter() - mark
        refused = next((p for p in described if not p["ok"]), None)
        if refused is not None and not self.needs.fresh:
            self.reason = f"warm start unavailable: {refused['reason']}"
            self.needs = dataclasses.replace(self.needs, fresh=True)
            described = self._get([self._prepare(n) for n in node_ids], "start zygotes")
            refused = next((p for p in described if not p["ok"]), None)
        if refused is not None:
            raise ClusterMismatchError(f"no way to start the ranks: {refused['reason']}")
        self.zygotes_started = sum(bool(p["started"]) for p in described)
        nodes = [NodeSlot(d["node_id"], d["ip"], d["hostname"]) for d in described]
        self.plan = make_plan(
            nodes, cluster.gpus_per_node, described[0]["port"], self.backend, self.extra_env
        )
        for spec in self.plan.ranks:
            info = described[spec.node_rank]
            gpus = self._gpu_ids[spec.node_rank] if self._gpu_ids else []
            self.rank_info.append(
                {
                    "node_id": spec.node_id,
                    "ip": info["ip"],
                    "hostname": info["hostname"],
                    "pid": info["pid"],
                    "gpu_ids": gpus,
                    "rank": spec.rank,
                    "node_rank": spec.node_rank,
                    "local_rank": spec.local_rank,
                }
            )
        self.timings["placement_s"] = time.perf_counter() - started
        return self.plan

    def _prepare(self, node_id: str) -> Any:
        return self.pool.get(node_id).prepare.remote(self.needs, self.job_env)

    def _prepare_known_nodes(self) -> dict[str, Any]:
        """When exactly as many nodes can host the job as it asks for, they are the ones
        the placement group gets: their zygotes are prepared while it is being placed."""
        if self.pin_nodes:
            return {}
        per_node = self.cluster.gpus_per_node
        usable = [
            n["NodeID"]
            for n in alive_nodes()
            if n["NodeID"] not in self.exclude_node_ids and slots_of(n, self.backend) >= per_node
        ]
        if len(usable) != self.cluster.nodes:
            return {}
        self.pool.ensure(usable)
        return {node_id: self._prepare(node_id) for node_id in usable}

    def _get(self, refs: list[Any], what: str, timeout_s: float | None = None) -> list[Any]:
        return get_all(refs, what, self.timeout_s if timeout_s is None else timeout_s)

    def start_line(self) -> str:
        if self.mode == "warm":
            note = (
                f"; {self.zygotes_started} zygote(s) started for it" if self.zygotes_started else ""
            )
            if self.pool.note:
                note += f"; {self.pool.note}, so this launch started its own"
            return (
                f"ranks: warm start (forked from the zygote on each node, "
                f"{', '.join(self.needs.preload)} imported{note})"
            )
        why = f"; {self.pool.note}, so this launch started its own" if self.pool.note else ""
        return f"ranks: fresh processes ({self.reason}{why})"

    def start_record(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "preload": list(self.needs.preload)}

    def spawn(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.plan is not None
        started = time.perf_counter()
        ray_job_id = ray.get_runtime_context().get_job_id()
        refs = []
        for node_rank, agent in enumerate(self.agents):
            gpus = (
                {"CUDA_VISIBLE_DEVICES": ",".join(self._gpu_ids[node_rank])}
                if self._gpu_ids
                else {}
            )
            ranks = [
                {"rank": r.rank, "env": {**r.env, **gpus}}
                for r in self.plan.ranks_on_node(node_rank)
            ]
            refs.append(
                agent.spawn.remote(self.job_key, self.needs, ranks, spec, self.pg, ray_job_id)
            )
        self._spawned = True
        replies = self._get(refs, "start ranks", timeout_s=60)
        refused = next((r for r in replies if not r["ok"]), None)
        if refused is not None:
            self.stop_ranks()
            failed = refused.get("failed")
            if failed and self.needs.fresh:
                info = self.rank_info[failed["rank"]]
                kinds = {e.__name__: e for e in ENVIRONMENT_ERRORS}  # rebuilt on this side
                cause = kinds.get(failed["type"], OSError)(failed["text"])
                raise RankStartError(failed["rank"], info["node_id"], info["hostname"], cause)
            if self.needs.fresh:  # no other way left
                raise ClusterMismatchError(f"no way to start the ranks: {refused['reason']}")
            self.reason = f"warm start unavailable: {refused['reason']}"
            self.needs = dataclasses.replace(self.needs, fresh=True)
            prepared = self._get(
                [a.prepare.remote(self.needs, self.job_env) for a in self.agents], "start zygotes"
            )
            broken = next((p for p in prepared if not p["ok"]), None)
            if broken is not None:
                raise ClusterMismatchError(f"no way to start the ranks: {broken['reason']}")
            return self.spawn(spec)
        self.timings["spawn_s"] = time.perf_counter() - started
        placement = [p for reply in replies for p in reply["placement"]]
        return sorted(placement, key=lambda p: p["rank"])

    def poll(
        self, wait_s: float = 0.0, report_timeout_s: float = REPORT_TIMEOUT_S
    ) -> tuple[dict[int, dict], dict[int, str]]:
        """One report per node (by node rank) that answered within ``wait_s +
        report_timeout_s``, and the nodes whose agent is gone (why). A node missing from
        both missed this report; its request stays out and is read on a later poll."""
        asked = set(self._asking.values())
        for index, agent in enumerate(self.agents):
            if index not in asked and index not in self._gone:
                self._asking[agent.report.remote(self.job_key, wait_s)] = index
        refs = list(self._asking)
        if not refs:
            return {}, {}
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s + report_timeout_s)
        reports: dict[int, dict] = {}
        dead: dict[int, str] = {}
        for ref in ready:
            index = self._asking.pop(ref)
            try:
                report = ray.get(ref)
            except ray.exceptions.RayError as err:
                dead[index] = f"its node agent is gone ({type(err).__name__})"
                self.pool.forget(self.rank_info[index * self.cluster.gpus_per_node]["node_id"])
                continue
            if report is None:
                dead[index] = "its node agent no longer knows the job"
            else:
                reports[index] = report
        self._gone.update(dead)
        return reports, dead

    def _agent_of(self, rank: int) -> Any:
        return self.agents[int(self.rank_info[rank]["node_rank"])]

    def start_sampler(self, rank: int, *args: Any) -> None:
        """The goodput ledger's utilisation sampler on ``rank``'s node, for this job."""
        self._agent_of(rank).start_sampler.remote(self.job_key, *args)

    def drain_samples(self, rank: int, stop: bool = False) -> Any:
        """A ref to the samples taken on ``rank``'s node since the last drain."""
        return self._agent_of(rank).drain_samples.remote(self.job_key, stop)

    def log_tail(self, rank: int) -> str:
        return ray.get(self._agent_of(rank).log_tail.remote(self.job_key, rank), timeout=5)

    def dump_stack(self, rank: int) -> str:
        return ray.get(self._agent_of(rank).dump_stack.remote(self.job_key, rank), timeout=10)

    def stop_ranks(self) -> None:
        if not self._spawned:
            return
        self._spawned = False
        stops = [
            agent.stop_job.remote(self.job_key, STOP_GRACE_S)
            for index, agent in enumerate(self.agents)
            if index not in self._gone  # a node found dead would keep the teardown waiting
        ]
        with contextlib.suppress(Exception):
            ray.wait(stops, num_returns=len(stops), timeout=STOP_GRACE_S + 4)

    def shutdown(self) -> None:
        self.stop_ranks()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None
