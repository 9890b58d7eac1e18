"""A benchmark's ranks, on the driver's side: started by the node agents as a launch's are
(``RankGroup``: one STRICT_SPREAD bundle per node, ranks packed per node, node rank =
bundle index, torchrun's environment, GPUs from the bundle), each serving the functions
the driver sends (``ranks/workers.py``) with torch.distributed up (NCCL on GPU, gloo on
CPU). ``run(fn, ...)`` calls ``fn(ctx, ...)`` on every rank at once, with a timeout; a
module-level ``fn`` travels by reference (its module must be importable on the ranks, as
gosok's are), a lambda or a local function by value (cloudpickle).
Teardown always happens (context manager): ranks stopped, placement group removed.

Use::

    with WorkerGroup(cluster_cfg, timeout_s=120) as group:
        results = group.run(my_rank_fn, arg)       # list, index = rank
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import ray

from gosok.launcher.errors import ClusterMismatchError, CollectiveTimeoutError, RankCallError
from gosok.launcher.launch.placement import get_all
from gosok.launcher.launch.rank_group import AgentPool, RankGroup
from gosok.launcher.ranks import workers
from gosok.launcher.ranks.agent import WarmNeeds
from gosok.launcher.ranks.plan import Plan
from gosok.launcher.ranks.script_runner import Program
from gosok.launcher.results.run_dir import run_dir

RELAY_SLACK_S = 30.0  # the agents' own time to relay a call, on top of its timeout


class WorkerGroup:
    """A placement group, one served rank per slot, initialised process groups."""

    def __init__(
        self,
        cluster: Any,
        timeout_s: float = 300.0,
        extra_env: dict[str, str] | None = None,
        pin_nodes: tuple[dict[str, Any], ...] = (),
    ) -> None:
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.extra_env = dict(extra_env or {})
        self.pin_nodes = tuple(pin_nodes)  # node ranks on exactly these nodes, in order
        self.pool: AgentPool | None = None
        self.ranks: RankGroup | None = None
        self.plan: Plan | None = None
        self.rank_info: list[dict[str, Any]] = []
        self.pg_init_seconds = 0.0

    def __enter__(self) -> WorkerGroup:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def backend(self) -> str:
        assert self.ranks is not None
        return self.ranks.backend

    def start(self) -> Plan:
        self.pool = AgentPool(keep=getattr(self.cluster, "kind", "") == "local")
        self.ranks = RankGroup(
            self.pool,
            self.cluster,
            self.extra_env,
            WarmNeeds(),
            timeout_s=self.timeout_s,
            pin_nodes=self.pin_nodes,
        )
        self.plan = plan = self.ranks.start()
        rank_env = {
            str(spec.rank): {"GOSOK_NODE_ID": spec.node_id, "GOSOK_BACKEND": plan.backend}
            for spec in plan.ranks
        }
        program = Program(sys.executable, workers.__name__, module=True)
        self.ranks.spawn(
            {
                "program": asdict(program),
                "env": {},
                "rank_env": rank_env,
                "cwd": str(run_dir()),
                "log_dir": f"benchmark-{self.ranks.job_key}",
                "calls": True,
            }
        )
        self.rank_info = [dict(info) for info in self.ranks.rank_info]
        for info, extra in zip(self.rank_info, self.run(workers.describe), strict=True):
            info.update(extra)
        self._check_gpu_model()
        init = self.run(
            workers.init_process_group, self.timeout_s, timeout_s=self.timeout_s + RELAY_SLACK_S
        )
        self.pg_init_seconds = max(init)
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

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """Call ``fn(ctx, *args, **kwargs)`` on every rank; results indexed by rank. A
        rank's exception is raised here, with its rank, host and traceback as notes."""
        assert self.ranks is not None
        what = getattr(fn, "__name__", "rank function")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        payload = ray.put(ray.cloudpickle.dumps((fn, args, kwargs)))
        refs = [a.call.remote(self.ranks.job_key, payload, timeout) for a in self.ranks.agents]
        results: list[Any] = [None] * len(self.rank_info)
        replies = get_all(refs, what, timeout + RELAY_SLACK_S)
        for node_rank, answers in enumerate(replies):
            if answers is None:
                raise RankCallError(f"{what}: node {node_rank}'s agent no longer knows the ranks")
            for rank, answer, why in answers:
                if answer is None:
                    kind = CollectiveTimeoutError if "no answer" in why else RankCallError
                    raise kind(f"{what}: {why}")
                host = self.rank_info[rank]["hostname"]
                try:
                    ok, value, text = pickle.loads(answer)
                except Exception as err:  # noqa: BLE001  (what the driver cannot rebuild)
                    raise RankCallError(
                        f"{what}: the answer of rank {rank} ({host}) cannot be read here: "
                        f"{type(err).__name__}: {err}"
                    ) from err
                if not ok:
                    if not isinstance(value, Exception):  # SystemExit, KeyboardInterrupt
                        value = RankCallError(f"{what} ended with {type(value).__name__}")
                    value.add_note(f"raised by {what} on rank {rank} ({host}):\n{text}")
                    raise value
                results[rank] = value
        return results

    def shutdown(self) -> None:
        """Stop the ranks and remove the placement group; safe to call twice."""
        if self.ranks is not None:
            self.ranks.shutdown()
        if self.pool is not None:
            self.pool.close()
