"""How ``gosok launch`` starts and watches its ranks: forked from a warm server on each
node (the default), or as fresh interpreters (``launch.fresh_process=true``, and the
fallback), in both cases started and watched by one holder per node.

Warm start: every node has one long-lived holder, a detached Ray actor named
``gosok-warm-<node id>`` (namespace ``gosok``) pinned to its node, that keeps a warm
server (``warm.py``) with torch imported -- plus DeepSpeed and the recipe module when a
job needs them -- and forks each rank's script from it. The holder outlives the launch
(the next launch on the same cluster finds it with torch already imported) and goes away
with the cluster (``gosok cluster down``, ``ray stop``). A holder restarts its server when
the Python environment on disk changed (``ServerHandle.stale``), and is replaced when its
own code changed and it runs nothing.

Per launch the driver reserves the ranks' slots (or GPUs) with a placement group, one
STRICT_SPREAD bundle per node, exactly as the fresh path does, but starts no actor: it asks
the holders of the bundles' nodes to fork the ranks. A rank dies with its holder (the warm
server kills a caller's children when the caller goes), and a holder kills a job's ranks
when the job's placement group is removed -- which Ray does when the driver exits or dies
-- or when the driver has not been heard from for ``LEASE_S``. Stack dumps (SIGUSR1 to
``GOSOK_STACK_FILE``), heartbeats, tee'd output and exit codes work as for fresh ranks:
both paths use the same node-side functions (``script_runner.py``).

When a warm server cannot serve a job (``job.python`` is another interpreter, ``job.env``
sets an interpreter start-up variable such as PYTHONPATH, a preload fails), the holders
start fresh interpreters instead and the launch says why in one line. Only when part of a
GPU node is allocated (the GPU ids are Ray's to give, per actor) does each rank get its
own actor (``ActorRanks``), polled one call per rank.

Each poll asks every node's holder once; it answers for all of its ranks in one report
(``node_report.py``): exit codes, progress, new output.

Use (the supervisor does this once per attempt)::

    ranks = LaunchRanks(cluster, env, needs=WarmNeeds(preload=("torch",)), timeout_s=120)
    ranks.start()                          # placement group + the nodes' holders
    print(ranks.start_line())              # "ranks: warm start ..." / "ranks: fresh ..."
    placement = ranks.spawn(spawn_spec)    # one dict per rank
    reports, dead = ranks.poll(wait_s=0.5) # one report per node; early when a rank exits
    ranks.stop_ranks(); ranks.shutdown()
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gosok.launcher.cluster.local import SLOT_RESOURCE, free_port
from gosok.launcher.config.secrets import is_secret_name
from gosok.launcher.errors import (
    ENVIRONMENT_ERRORS,
    ClusterMismatchError,
    CollectiveTimeoutError,
    RankStartError,
)
from gosok.launcher.ledger.sampler import SamplingSlot
from gosok.launcher.ranks import node_report, progress, script_runner, warm
from gosok.launcher.ranks.node_report import NodeReporter
from gosok.launcher.ranks.plan import NodeSlot, Plan, backend_for, make_plan
from gosok.launcher.ranks.workers import (
    NODE_ID_LABEL,
    WorkerGroup,
    alive_nodes,
    check_cluster,
    slots_of,
    wait_placed,
)

NAMESPACE = "gosok"
HOLDER_PREFIX = "gosok-warm-"
HOLDER_VERSION = 5
HOLDER_CONCURRENCY = 32
WATCH_EVERY_S = 1.0
LEASE_S = 60.0  # a job whose driver is silent this long is killed (backstop of the PG check)
MAX_SERVERS = 3  # per node: script (torch), recipe, recipe + DeepSpeed
PREPARE_TIMEOUT_S = 600.0  # a first preload of torch + DeepSpeed on a busy node
UNREACHABLE_S = 10.0
REPORT_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0
# Read when the preloads (torch, its OpenMP runtime, DeepSpeed) are imported.
IMPORT_ENV_KEYS = ("DS_ACCELERATOR", "TORCH_CPP_LOG_LEVEL", "OMP_NUM_THREADS")


class WarmUnavailable(Exception):
    """The warm servers cannot serve this job; the message is the one-line reason."""


@dataclass(frozen=True)
class WarmNeeds:
    """What a job asks of the warm servers: modules to preload, env those modules read at
    import time, and the interpreter the ranks must run."""

    preload: tuple[str, ...] = ("torch",)
    import_env: tuple[tuple[str, str], ...] = ()
    python: str = sys.executable
    fresh: bool = False  # the holder starts each rank as a fresh interpreter instead

    @classmethod
    def for_job(cls, argv: list[str], env: dict[str, str], preload: tuple[str, ...]) -> WarmNeeds:
        import_env = tuple(sorted((k, env[k]) for k in IMPORT_ENV_KEYS if k in env))
        return cls(tuple(preload), import_env, argv[0] if argv else sys.executable)


# The server that starts fresh ranks: nothing preloaded, it forks and executes them.
LAUNCHER = WarmNeeds(preload=())
LAUNCHER_KEY = (LAUNCHER.preload, LAUNCHER.import_env)


def holder_name(node_id: str) -> str:
    return f"{HOLDER_PREFIX}{node_id}"


def _code_fingerprint() -> str:
    """sha256 of the sources a holder runs, so a holder left by an older gosok is noticed."""
    digest = hashlib.sha256()
    for module in (warm, script_runner, node_report, progress, sys.modules[__name__]):
        with contextlib.suppress(OSError, TypeError):
            digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


# ---- the node side: one holder per node ---------------------------------------------------


@dataclass
class _Server:
    key: tuple
    handle: warm.ServerHandle
    fingerprint: str
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _Job:
    key: str
    pg: Any
    slots: dict[int, Any] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)
    last_seen: float = field(default_factory=time.monotonic)
    lease_s: float = LEASE_S
    sampling: SamplingSlot = field(default_factory=SamplingSlot)
    reporter: NodeReporter = field(default_factory=NodeReporter)
    report_lock: threading.Lock = field(default_factory=threading.Lock)


@ray.remote(num_cpus=0)
class WarmHolder:
    """This node's warm servers and the ranks forked from them, per job."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.code = _code_fingerprint()
        self._lock = threading.RLock()  # jobs
        self._start_lock = threading.Lock()  # servers
        self._servers: dict[tuple, _Server] = {}
        self._retiring: list[_Server] = []
        self._failed: dict[tuple, tuple[str, str]] = {}  # key -> (fingerprint, reason)
        self._jobs: dict[str, _Job] = {}
        self._generation = 0
        # Servers die with the thread that started them (PR_SET_PDEATHSIG): one thread
        # that lives as long as this holder starts them all.
        self._starter = concurrent.futures.ThreadPoolExecutor(1, "gosok-warm-start")
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, "gosok-fresh-start")
        threading.Thread(target=self._watch, name="gosok-warm-watch", daemon=True).start()

    # -- facts

    def describe(self) -> dict[str, Any]:
        with self._lock:
            jobs = len(self._jobs)
        return {
            "node_id": self.node_id,
            "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "python": sys.executable,
            "version": HOLDER_VERSION,
            "current": self.code == _code_fingerprint(),
            "jobs": jobs,
            "servers": [
                {"preload": list(s.key[0]), "pid": s.handle.pid} for s in self._servers.values()
            ],
        }

    def free_port(self) -> int:
        return free_port("")

    # -- servers

    def prepare(self, needs: WarmNeeds, job_env: dict[str, str]) -> dict[str, Any]:
        """Make sure a server for ``needs`` is up: ``describe()`` plus ``ok``, ``reason``,
        ``seconds``, ``started``, ``pid`` (the server's), ``port`` (free here, for a master)
        and ``outdated`` (this holder's code is not the installed one: nothing prepared).
        Refuses (ok False) what a fork could not give the ranks."""
        facts = {**self.describe(), "port": free_port(""), "outdated": False}
        if facts["version"] != HOLDER_VERSION or not facts["current"]:
            reason = f"the warm holder on node {self.node_id[:8]} runs older gosok code and is busy"
            return {**facts, **self._no(reason), "outdated": True}
        return {**facts, **self._prepare(needs, job_env)}

    def _prepare(self, needs: WarmNeeds, job_env: dict[str, str]) -> dict[str, Any]:
        if needs.fresh:  # each rank is a new interpreter, executed by the launching server
            started = time.monotonic()
            with contextlib.suppress(warm.WarmServerError):
                self._server_for(LAUNCHER)
            return {"ok": True, "reason": "", "seconds": time.monotonic() - started,
                    "started": False, "pid": None}  # fmt: skip
        if needs.python != sys.executable:
            return self._no(
                f"job.python={needs.python} is not the warm server's interpreter ({sys.executable})"
            )
        differ = [
            k for k in warm.STARTUP_ENV_KEYS if k in job_env and job_env[k] != os.environ.get(k)
        ]
        if differ:
            return self._no(
                f"job.env sets {', '.join(differ)}, fixed when an interpreter starts and "
                "different from the warm server's"
            )
        started = time.monotonic()
        try:
            server, fresh = self._server_for(needs)
        except warm.WarmServerError as err:
            return self._no(str(err))
        return {
            "ok": True,
            "reason": "",
            "seconds": time.monotonic() - started,
            "started": fresh,
            "pid": server.handle.pid,
        }

    def _no(self, reason: str) -> dict[str, Any]:
        return {"ok": False, "reason": reason, "seconds": 0.0, "started": False, "pid": None}

    def _server_for(self, needs: WarmNeeds) -> tuple[_Server, bool]:
        key = (tuple(needs.preload), tuple(needs.import_env))
        with self._start_lock:
            server = self._servers.get(key)
            if server is not None:
                try:
                    if not server.handle.stale():
                        server.last_used = time.monotonic()
                        return server, False
                    reason = "its Python environment changed on disk"
                except (OSError, warm.WarmServerError):
                    reason = "it stopped answering"
                print(f"gosok-warm: replacing the server for {key[0]}: {reason}", flush=True)
                self._retire(self._servers.pop(key))
            fingerprint = warm.env_fingerprint(needs.preload)
            failed = self._failed.get(key)
            if failed is not None and failed[0] == fingerprint:
                raise warm.WarmServerError(failed[1])
            self._evict(key)
            try:
                server = self._start(key, needs, fingerprint)
            except warm.WarmServerError as err:
                self._failed[key] = (fingerprint, self._describe_failure(needs, err))
                raise warm.WarmServerError(self._failed[key][1]) from err
            self._failed.pop(key, None)
            self._servers[key] = server
            return server, True

    def _describe_failure(self, needs: WarmNeeds, err: warm.WarmServerError) -> str:
        """One line: what the server's log says went wrong (the exception of a failed
        preload, a refusal), else the error's first line."""
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", ln)]
        said = [ln.split("] ", 1)[-1] for ln in lines if "refusing" in ln or "preload of" in ln]
        detail = (raised or said or lines or ["no detail"])[-1]
        return (
            f"the warm server on node {self.node_id[:8]} could not start with "
            f"{', '.join(needs.preload)}: {detail}"
        )

    def _start(self, key: tuple, needs: WarmNeeds, fingerprint: str) -> _Server:
        self._generation += 1
        tag = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
        name = f"w-{self.node_id[:12]}-{tag}-{self._generation}"
        path = warm.default_socket_path(name)
        log = os.path.join(_ray_logs_dir() or os.path.dirname(path), f"gosok-warm-{name}.log")
        # The server's starting environment is what every rank forked from it shows in
        # /proc/self/environ and /proc/<ppid>/environ: none of the holder's secrets (the
        # node's Ray token, a key the cluster was started with). Ranks get their job's
        # environment in the request.
        env = {k: v for k, v in os.environ.items() if not is_secret_name(k)}
        env.update(dict(needs.import_env))
        future = self._starter.submit(
            warm.start_server, path, needs.preload, sys.executable, True, env, log, 300.0
        )
        handle = future.result()
        return _Server(key, handle, fingerprint)

    def _retire(self, server: _Server) -> None:
        """Stop a server now if it runs nothing, else once its ranks have ended."""
        try:
            busy = server.handle.hello()["live"] > 0
        except (OSError, warm.WarmServerError):
            busy = False
        if busy:
            self._retiring.append(server)
        else:
            self._starter.submit(server.handle.stop, 1.0)

    def _evict(self, key: tuple) -> None:
        """Make room for the server ``key``: at most MAX_SERVERS with preloads per node (the
        launching server, nothing preloaded, neither counts nor is evicted)."""
        if key == LAUNCHER_KEY:
            return
        while True:
            heavy = [s for s in self._servers.values() if s.key != LAUNCHER_KEY]
            if len(heavy) < MAX_SERVERS:
                return
            oldest = min(heavy, key=lambda s: s.last_used)
            self._retire(self._servers.pop(oldest.key))

    def stop_servers(self) -> int:
        """Stop every server (their ranks with them); the holder stays."""
        with self._start_lock:
            servers = list(self._servers.values()) + self._retiring
            self._servers.clear()
            self._retiring.clear()
        for server in servers:
            with contextlib.suppress(Exception):
                self._starter.submit(server.handle.stop, 1.0).result(60)
        return len(servers)

    # -- ranks of a job

    def spawn(
        self,
        job_key: str,
        needs: WarmNeeds,
        ranks: list[dict[str, Any]],
        spec: dict[str, Any],
        pg: Any,
        ray_job_id: str,
    ) -> dict[str, Any]:
        """Start this node's ranks of a job, forked from the warm server (or as fresh
        interpreters with ``needs.fresh``): ``ranks`` = [{"rank", "env"}] (the rank's
        torchrun env); ``spec`` as for ``script_runner.spawn_rank``. A fresh rank that
        cannot start answers ``failed`` (its rank, the error's type and text)."""
        handle = None
        wanted = LAUNCHER if needs.fresh else needs
        server = self._servers.get((tuple(wanted.preload), tuple(wanted.import_env)))
        if server is not None:
            server.last_used = time.monotonic()
            handle = server.handle
        elif not needs.fresh:
            return self._no("the warm server for this job is gone (prepare first)")
        with self._lock:
            job = self._jobs.setdefault(job_key, _Job(job_key, pg))
            job.last_seen = time.monotonic()
        placement = []
        for item in ranks:
            slot = SimpleNamespace(rank=int(item["rank"]), node_id=self.node_id, state={})
            base = dict(os.environ)
            base.update(item["env"])
            base["RAY_JOB_ID"] = ray_job_id
            start = functools.partial(
                script_runner.spawn_rank, slot, spec, handle, base, job.wake.set, needs.fresh
            )
            try:
                # A rank Popen'd here dies with the thread that started it
                # (PR_SET_PDEATHSIG): one thread that lives as long as this holder starts
                # them all. That is the fallback for fresh ranks when the launching server
                # is not up; they then see this holder's environment as their parent's.
                info = start() if handle else self._spawner.submit(start).result()
            except (OSError, ValueError, warm.WarmServerError) as err:
                self.stop_job(job_key, grace_s=0.0)
                if needs.fresh:
                    failed = {"rank": slot.rank, "type": type(err).__name__, "text": str(err)}
                    return {**self._no(str(err)), "failed": failed}
                return self._no(f"the warm server on node {self.node_id[:8]} refused: {err}")
            with self._lock:
                job.slots[slot.rank] = slot
            placement.append(info)
        return {"ok": True, "reason": "", "placement": placement}

    def _job(self, job_key: str) -> _Job | None:
        with self._lock:
            job = self._jobs.get(job_key)
            if job is not None:
                job.last_seen = time.monotonic()
            return job

    def report(self, job_key: str, wait_s: float = 0.0) -> dict[str, Any] | None:
        """One report on all of this node's ranks of the job (``node_report.py``), None when
        the job is unknown here; waits up to ``wait_s`` for a rank of the job to end first."""
        job = self._job(job_key)
        if job is None:
            return None
        job.lease_s = max(LEASE_S, 10 * wait_s + UNREACHABLE_S)  # a driver polling slowly
        if wait_s > 0 and not job.wake.is_set():
            job.wake.wait(wait_s)
        job.wake.clear()
        self._job(job_key)
        with job.report_lock:
            for slot in list(job.slots.values()):
                job.reporter.add(script_runner.poll_rank(slot))
            return job.reporter.report()

    def log_tail(self, job_key: str, rank: int, lines: int = 20) -> str:
        job = self._job(job_key)
        slot = job.slots.get(rank) if job else None
        return script_runner.log_tail(slot, lines) if slot else ""

    def dump_stack(self, job_key: str, rank: int, wait_s: float = 1.0) -> str:
        job = self._job(job_key)
        slot = job.slots.get(rank) if job else None
        return script_runner.dump_stack(slot, wait_s) if slot else ""

    def stop_job(self, job_key: str, grace_s: float = STOP_GRACE_S) -> dict[int, int | None]:
        """SIGTERM the job's ranks (process groups), SIGKILL after ``grace_s``; forget it."""
        with self._lock:
            job = self._jobs.pop(job_key, None)
        if job is None:
            return {}
        with contextlib.suppress(Exception):
            job.sampling.drain(stop=True)
        slots = list(job.slots.values())
        threads = [
            threading.Thread(target=script_runner.stop_rank, args=(slot, grace_s), daemon=True)
            for slot in slots
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(grace_s + 10.0)
        return {slot.rank: script_runner._returncode(slot.state["child"]["proc"]) for slot in slots}

    # -- utilisation sampling for the goodput ledger (``RankActor`` has the same methods)

    def start_sampler(
        self,
        job_key: str,
        interval_s: float,
        node: str,
        cluster: str,
        job_id: str,
        pids: Any = None,
    ) -> None:
        job = self._job(job_key)
        if job is not None:
            job.sampling.start(interval_s, node, cluster, job_id, pids)

    def drain_samples(self, job_key: str, stop: bool = False) -> list[dict[str, Any]]:
        job = self._job(job_key)
        return job.sampling.drain(stop) if job else []

    # -- the watchdog

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            with contextlib.suppress(Exception):
                self._watch_once()

    def _watch_once(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        now = time.monotonic()
        for job in jobs:
            reason = ""
            if now - job.last_seen > job.lease_s:
                reason = f"no word from its driver for {job.lease_s:.0f}s"
            elif job.pg is not None and _pg_removed(job.pg):
                reason = "its placement group was removed (the driver ended)"
            if reason:
                print(f"gosok-warm: killing the ranks of job {job.key}: {reason}", flush=True)
                self.stop_job(job.key, grace_s=0.0)
        for server in list(self._retiring):
            with contextlib.suppress(OSError, warm.WarmServerError):
                if server.handle.hello()["live"]:
                    continue
            self._retiring.remove(server)
            self._starter.submit(server.handle.stop, 1.0)


def _ray_logs_dir() -> str | None:
    """This node's Ray log directory (the servers' logs go beside the workers' and go
    away with the Ray session), or None."""
    with contextlib.suppress(Exception):
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    return None


def _pg_removed(pg: Any) -> bool:
    table = ray.util.placement_group_table(pg)
    return not table or table.get("state") == "REMOVED"


# ---- the driver side ----------------------------------------------------------------------


class _HolderMethod:
    def __init__(self, method: Any, job_key: str) -> None:
        self._method = method
        self._job_key = job_key

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.remote(self._job_key, *args, **kwargs)


class HolderRank:
    """Stands in for a rank's actor where code calls an actor method by name (the ledger's
    ``start_sampler`` / ``drain_samples``): the call goes to the node's holder, for this
    job."""

    def __init__(self, holder: Any, job_key: str) -> None:
        self._holder = holder
        self._job_key = job_key

    def __getattr__(self, name: str) -> _HolderMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _HolderMethod(getattr(self._holder, name), self._job_key)


def get_holder(node_id: str) -> Any:
    """The node's holder, created (detached, pinned to the node) if there is none."""
    return WarmHolder.options(
        name=holder_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=HOLDER_CONCURRENCY,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(node_id)


class WarmRanks:
    """One attempt's ranks started by the holders of the placement group's nodes: forked
    from their warm servers, or fresh interpreters with ``needs.fresh``. Either way each
    node's holder watches its ranks and reports on them in one message per poll."""

    def __init__(
        self,
        cluster: Any,
        needs: WarmNeeds,
        job_env: dict[str, str],
        timeout_s: float = 120.0,
        extra_env: dict[str, str] | None = None,
        exclude_node_ids: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.needs = needs
        self.job_env = dict(job_env)
        self.backend = backend_for(cluster.gpu)
        self.timeout_s = timeout_s
        self.extra_env = dict(extra_env or {})
        self.exclude_node_ids = tuple(exclude_node_ids)
        self.job_key = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.pg = None
        self.plan: Plan | None = None
        self.holders: list[Any] = []  # by node rank
        self.actors: list[Any] = []  # by rank: HolderRank of the rank's node
        self.rank_info: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.servers_started = 0
        self._spawned = False
        self._asking: dict[Any, int] = {}  # report requests out: ref -> node rank
        self._gone: set[int] = set()  # node ranks whose holder is gone

    @property
    def mode(self) -> str:
        return "fresh" if self.needs.fresh else "warm"

    @property
    def world(self) -> int:
        return self.cluster.nodes * self.cluster.gpus_per_node

    def _bundle(self) -> dict[str, float]:
        per_node = float(self.cluster.gpus_per_node)
        return {"GPU": per_node} if self.backend == "nccl" else {SLOT_RESOURCE: per_node}

    def start(self) -> Plan:
        cluster = self.cluster
        started = time.perf_counter()
        check_cluster(cluster, self.backend, self.exclude_node_ids)
        selector = None
        if self.exclude_node_ids:
            selector = [{NODE_ID_LABEL: f"!in({','.join(self.exclude_node_ids)})"}] * cluster.nodes
        self.pg = placement_group(
            [self._bundle()] * cluster.nodes,
            strategy="STRICT_SPREAD",
            bundle_label_selector=selector,
        )
        early = self._prepare_known_nodes()
        wait_placed(self.pg, self._bundle(), cluster.nodes, self.timeout_s)
        node_ids = ray.util.placement_group_table(self.pg)["bundles_to_node_id"]
        node_ids = [node_ids[i] for i in range(cluster.nodes)]
        self.timings["placement_group_s"] = time.perf_counter() - started
        if self.backend == "nccl":
            self._check_whole_gpu_nodes(node_ids)
        mark = time.perf_counter()
        refs = []
        for node_id in node_ids:
            holder, ref = early.get(node_id) or self._prepare_on(node_id)
            self.holders.append(holder)
            refs.append(ref)
        described = self._get(refs, "start warm servers", max(self.timeout_s, PREPARE_TIMEOUT_S))
        self._replace_outdated(node_ids, described)
        self.timings["warm_servers_s"] = time.perf_counter() - mark
        refused = next((p for p in described if not p["ok"]), None)
        if refused is not None:
            raise WarmUnavailable(refused["reason"])
        self.servers_started = sum(bool(p["started"]) for p in described)
        port = described[0]["port"]
        nodes = [NodeSlot(d["node_id"], d["ip"], d["hostname"]) for d in described]
        self.plan = make_plan(nodes, cluster.gpus_per_node, port, self.backend, self.extra_env)
        for spec in self.plan.ranks:
            info = described[spec.node_rank]
            self.rank_info.append(
                {
                    "node_id": spec.node_id,
                    "ip": info["ip"],
                    "hostname": info["hostname"],
                    "pid": info["pid"],
                    "gpu_ids": [],
                    "rank": spec.rank,
                    "node_rank": spec.node_rank,
                    "local_rank": spec.local_rank,
                }
            )
            self.actors.append(HolderRank(self.holders[spec.node_rank], self.job_key))
        self.timings["placement_s"] = time.perf_counter() - started
        return self.plan

    def _prepare_on(self, node_id: str) -> tuple[Any, Any]:
        holder = get_holder(node_id)
        return holder, holder.prepare.remote(self.needs, self.job_env)

    def _prepare_known_nodes(self) -> dict[str, tuple[Any, Any]]:
        """When exactly as many nodes can host the job as it asks for, they are the ones
        the placement group gets: their servers are prepared while it is being placed."""
        per_node = self.cluster.gpus_per_node
        usable = [
            n for n in alive_nodes()
            if n["NodeID"] not in self.exclude_node_ids and slots_of(n, self.backend) >= per_node
        ]  # fmt: skip
        if len(usable) != self.cluster.nodes or (
            self.backend == "nccl" and any(slots_of(n, self.backend) != per_node for n in usable)
        ):
            return {}
        return {n["NodeID"]: self._prepare_on(n["NodeID"]) for n in usable}

    def _check_whole_gpu_nodes(self, node_ids: list[str]) -> None:
        gpus = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in alive_nodes()}
        partial = [n for n in node_ids if gpus.get(n, 0) != self.cluster.gpus_per_node]
        if partial:
            raise WarmUnavailable(
                f"cluster.gpus_per_node={self.cluster.gpus_per_node} is part of node "
                f"{partial[0][:8]}'s {gpus.get(partial[0], 0)} GPUs, whose ids only per-rank "
                "actors are given"
            )

    def _replace_outdated(self, node_ids: list[str], described: list[dict[str, Any]]) -> None:
        """A holder of another gosok version (or whose code changed on disk) is replaced
        when it runs nothing; a busy one serves this job with fresh ranks."""
        for index, info in enumerate(described):
            # A holder older than this protocol answers without "outdated": replace it too.
            if not info.get("outdated", True) or info.get("jobs"):
                continue
            with contextlib.suppress(Exception):
                ray.get(self.holders[index].stop_servers.remote(), timeout=60)
            ray.kill(self.holders[index], no_restart=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    ray.get_actor(holder_name(node_ids[index]), namespace=NAMESPACE)
                except ValueError:
                    break
                time.sleep(0.05)
            self.holders[index], ref = self._prepare_on(node_ids[index])
            described[index] = self._get([ref], "start a warm server", PREPARE_TIMEOUT_S)[0]

    def _get(self, refs: list[Any], what: str, timeout_s: float | None = None) -> list[Any]:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return ray.get(refs, timeout=timeout)
        except GetTimeoutError as err:
            raise CollectiveTimeoutError(f"{what}: no answer in {timeout}s") from err

    def spawn(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.plan is not None
        started = time.perf_counter()
        ray_job_id = ray.get_runtime_context().get_job_id()
        refs = []
        for node_rank, holder in enumerate(self.holders):
            ranks = [{"rank": r.rank, "env": r.env} for r in self.plan.ranks_on_node(node_rank)]
            refs.append(
                holder.spawn.remote(self.job_key, self.needs, ranks, spec, self.pg, ray_job_id)
            )
        self._spawned = True
        replies = self._get(refs, "fork ranks", timeout_s=60)
        refused = next((r for r in replies if not r["ok"]), None)
        if refused is not None:
            self.stop_ranks()
            failed = refused.get("failed")
            if failed:
                info = self.rank_info[failed["rank"]]
                kinds = {e.__name__: e for e in ENVIRONMENT_ERRORS}  # rebuilt on this side
                cause = kinds.get(failed["type"], OSError)(failed["text"])
                raise RankStartError(failed["rank"], info["node_id"], info["hostname"], cause)
            raise WarmUnavailable(refused["reason"])
        self.timings["spawn_s"] = time.perf_counter() - started
        placement = [p for reply in replies for p in reply["placement"]]
        return sorted(placement, key=lambda p: p["rank"])

    def poll(
        self, wait_s: float = 0.0, report_timeout_s: float = REPORT_TIMEOUT_S
    ) -> tuple[dict[int, dict], dict[int, str]]:
        """One report per node (by node rank) that answered within ``wait_s +
        report_timeout_s``, and the nodes whose holder is gone (why). A node missing from
        both missed this report; its request stays out and is read on a later poll."""
        assert self.plan is not None
        asked = set(self._asking.values())
        for index, holder in enumerate(self.holders):
            if index not in asked and index not in self._gone:
                self._asking[holder.report.remote(self.job_key, wait_s)] = index
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
                dead[index] = f"its holder is gone ({type(err).__name__})"
                continue
            if report is None:
                dead[index] = "its warm holder no longer knows the job"
            else:
                reports[index] = report
        self._gone.update(dead)
        return reports, dead

    def _holder_of(self, rank: int) -> Any:
        assert self.plan is not None
        return self.holders[self.plan.ranks[rank].node_rank]

    def log_tail(self, rank: int) -> str:
        return ray.get(self._holder_of(rank).log_tail.remote(self.job_key, rank), timeout=5)

    def dump_stack(self, rank: int) -> str:
        return ray.get(self._holder_of(rank).dump_stack.remote(self.job_key, rank), timeout=10)

    def stop_ranks(self) -> None:
        if not self._spawned:
            return
        self._spawned = False
        stops = [
            h.stop_job.remote(self.job_key, STOP_GRACE_S)
            for index, h in enumerate(self.holders)
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


class ActorRanks:
    """One attempt's ranks as fresh interpreters, each started by its own ``RankActor``
    (``launch.fresh_process=true``, and the fallback)."""

    mode = "fresh"

    def __init__(
        self,
        cluster: Any,
        timeout_s: float = 120.0,
        extra_env: dict[str, str] | None = None,
        exclude_node_ids: tuple[str, ...] = (),
    ) -> None:
        self.group = WorkerGroup(
            cluster,
            timeout_s=timeout_s,
            extra_env=extra_env,
            exclude_node_ids=exclude_node_ids,
            init_process_group=False,
            shutdown_timeout_s=3.0,
        )
        self.timings: dict[str, float] = {}
        self._spawned = False
        self._asking: dict[Any, int] = {}  # poll requests out: ref -> rank
        self._reporters: dict[int, NodeReporter] = {}  # by node rank
        self._node_of: dict[int, int] = {}  # rank -> node rank

    @property
    def actors(self) -> list[Any]:
        return self.group.actors

    @property
    def rank_info(self) -> list[dict[str, Any]]:
        return self.group.rank_info

    @property
    def world(self) -> int:
        return len(self.group.actors)

    def start(self) -> Plan:
        started = time.perf_counter()
        plan = self.group.start()
        self.timings["placement_s"] = time.perf_counter() - started
        return plan

    def spawn(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        refs = [a.call.remote(script_runner.spawn_rank, spec) for a in self.actors]
        self._spawned = True
        placement = []
        for rank, ref in enumerate(refs):
            try:
                placement.append(ray.get(ref, timeout=60))
            except ray.exceptions.RayTaskError as err:
                info = self.rank_info[rank]
                cause = getattr(err, "cause", None) or err
                raise RankStartError(
                    rank, info["node_id"], info.get("hostname", ""), cause
                ) from err
        self.timings["spawn_s"] = time.perf_counter() - started
        return placement

    def poll(
        self, wait_s: float = 0.0, report_timeout_s: float = REPORT_TIMEOUT_S
    ) -> tuple[dict[int, dict], dict[int, str]]:
        """As ``WarmRanks.poll``; here the driver asks every rank's actor and folds the
        answers into per-node reports itself (one call per rank: the fallback path)."""
        if wait_s > 0:
            time.sleep(wait_s)
        node_of = self._node_of = self._node_of or {
            int(i["rank"]): int(i["node_rank"]) for i in self.rank_info
        }
        asked = set(self._asking.values())
        for rank, actor in enumerate(self.actors):
            if rank not in asked:
                self._asking[actor.call.remote(script_runner.poll_rank)] = rank
        refs = list(self._asking)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=report_timeout_s)
        answered: set[int] = set()
        dead: dict[int, str] = {}
        for ref in ready:
            rank = self._asking.pop(ref)
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayError as err:
                dead[node_of[rank]] = f"rank {rank}'s actor is gone ({type(err).__name__})"
                continue
            self._reporters.setdefault(node_of[rank], NodeReporter()).add(answer)
            answered.add(rank)
        waiting = {node_of[r] for r in self._asking.values()}
        heard = {node_of[r] for r in answered} - waiting - set(dead)
        reports = {node: self._reporters[node].report() for node in heard}
        return reports, dead

    def log_tail(self, rank: int) -> str:
        return ray.get(self.actors[rank].call.remote(script_runner.log_tail), timeout=5)

    def dump_stack(self, rank: int) -> str:
        return ray.get(self.actors[rank].call.remote(script_runner.dump_stack), timeout=10)

    def stop_ranks(self) -> None:
        if not self._spawned:
            return
        self._spawned = False
        stops = [a.call.remote(script_runner.stop_rank) for a in self.actors]
        with contextlib.suppress(Exception):
            ray.wait(stops, num_returns=len(stops), timeout=6)

    def shutdown(self) -> None:
        self.stop_ranks()
        self.group.shutdown()


class LaunchRanks:
    """An attempt's ranks, warm when possible. The ways to start them, tried in order:
    warm (``WarmRanks``), fresh interpreters started by each node's holder (``WarmRanks``
    with ``needs.fresh``: one monitor per node still), and one actor per rank
    (``ActorRanks``: only where per-actor GPU ids are needed, part of a GPU node). A way
    that cannot serve the job (at placement or when starting the ranks) hands over to the
    next, saying why. ``mode`` is ``warm`` or ``fresh``; ``reason`` says why fresh."""

    def __init__(
        self,
        cluster: Any,
        extra_env: dict[str, str],
        needs: WarmNeeds,
        job_env: dict[str, str] | None = None,
        fresh_process: bool = False,
        timeout_s: float = 120.0,
        exclude_node_ids: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.extra_env = dict(extra_env)
        self.needs = needs
        self.job_env = dict(job_env or {})
        self.timeout_s = timeout_s
        self.exclude_node_ids = tuple(exclude_node_ids)
        self.reason = "launch.fresh_process=true" if fresh_process else ""
        self._ways = [self._warm, self._fresh, self._actors][1 if fresh_process else 0 :]
        self.impl: WarmRanks | ActorRanks = self._ways.pop(0)()

    def _warm(self) -> WarmRanks:
        return WarmRanks(
            self.cluster, self.needs, self.job_env, self.timeout_s, self.extra_env,
            self.exclude_node_ids,
        )  # fmt: skip

    def _fresh(self) -> WarmRanks:
        needs = dataclasses.replace(self.needs, fresh=True)
        return WarmRanks(
            self.cluster, needs, self.job_env, self.timeout_s, self.extra_env,
            self.exclude_node_ids,
        )  # fmt: skip

    def _actors(self) -> ActorRanks:
        return ActorRanks(self.cluster, self.timeout_s, self.extra_env, self.exclude_node_ids)

    @property
    def mode(self) -> str:
        return self.impl.mode

    @property
    def actors(self) -> list[Any]:
        return self.impl.actors

    @property
    def rank_info(self) -> list[dict[str, Any]]:
        return self.impl.rank_info

    @property
    def world(self) -> int:
        return self.impl.world

    @property
    def timings(self) -> dict[str, float]:
        return self.impl.timings

    def start_line(self) -> str:
        if self.mode == "warm":
            servers = getattr(self.impl, "servers_started", 0)
            note = f"; {servers} warm server(s) started for it" if servers else ""
            return (
                f"ranks: warm start (forked from the warm server on each node, "
                f"{', '.join(self.needs.preload)} imported{note})"
            )
        return f"ranks: fresh processes ({self.reason})"

    def start_record(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "preload": list(self.needs.preload)}

    def _fall_back(self, err: WarmUnavailable) -> None:
        self.impl.shutdown()
        if not self._ways:
            raise ClusterMismatchError(f"no way to start the ranks: {err}") from err
        if self.mode == "warm":
            self.reason = f"warm start unavailable: {err}"
        self.impl = self._ways.pop(0)()
        self.start()

    def start(self) -> Any:
        try:
            return self.impl.start()
        except WarmUnavailable as err:
            self._fall_back(err)

    def spawn(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return self.impl.spawn(spec)
        except WarmUnavailable as err:
            self._fall_back(err)
            return self.spawn(spec)

    def poll(self, wait_s: float = 0.0, report_timeout_s: float = REPORT_TIMEOUT_S):
        return self.impl.poll(wait_s, report_timeout_s)

    def log_tail(self, rank: int) -> str:
        return self.impl.log_tail(rank)

    def dump_stack(self, rank: int) -> str:
        return self.impl.dump_stack(rank)

    def stop_ranks(self) -> None:
        self.impl.stop_ranks()

    def shutdown(self) -> None:
        self.impl.shutdown()
