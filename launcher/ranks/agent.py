"""The node agent: one Ray actor per node that starts, watches and stops the ranks of the
launches placed on its node, forked from its zygotes (``zygote.py``) or, with ``fresh``,
as new interpreters executed by a zygote that preloads nothing.

An agent lives either for one launch (created by the launch on each node it uses, killed
at its end, and with it when its driver dies: Ray ends the actors a driver owns), or for
the cluster (named ``gosok-agent-<node id>``, so the next launch finds torch already
imported; it goes with the cluster): ``gosok cluster up`` starts one per node
(``start_cluster_agents``), and a launch on a local cluster, which gosok owns, starts the
missing ones as the cluster's. A launch uses the cluster's agent only when it runs the
launch's own gosok code; otherwise it starts its own agents and says why.

A job's ranks end when the job's placement group is removed (Ray removes it when the driver
ends); a zygote's ranks end with the zygote, and a zygote with its agent (its channel
closes). Each poll asks the agent once for a report on all of the job's ranks on the node
(``node_report.py``); a rank's exit wakes a waiting poll.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import re
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from gosok.launcher.cluster.local import free_port
from gosok.launcher.config.secrets import is_secret_name
from gosok.launcher.ledger.sampler import SamplingSlot
from gosok.launcher.ranks import forked, node_report, progress, script_runner, workers, zygote
from gosok.launcher.ranks.node_report import NodeReporter

NAMESPACE = "gosok"
AGENT_PREFIX = "gosok-agent-"
AGENT_CONCURRENCY = 32
WATCH_EVERY_S = 1.0
MAX_ZYGOTES = 3  # with preloads, per node: script (torch), recipe, recipe + DeepSpeed
STOP_GRACE_S = 2.0
# Read when the preloads (torch, DeepSpeed) are imported (a zygote drops OMP_NUM_THREADS
# and MKL_NUM_THREADS: each rank sets its own thread count).
IMPORT_ENV_KEYS = ("DS_ACCELERATOR", "TORCH_CPP_LOG_LEVEL")


@dataclass(frozen=True)
class WarmNeeds:
    """What a job asks of a node's zygote: modules to preload, env those modules read at
    import time, and the interpreter the ranks must run; ``fresh``: new interpreters."""

    preload: tuple[str, ...] = ("torch",)
    import_env: tuple[tuple[str, str], ...] = ()
    python: str = sys.executable
    fresh: bool = False

    @classmethod
    def for_job(cls, python: str, env: dict[str, str], preload: tuple[str, ...]) -> WarmNeeds:
        import_env = tuple(sorted((k, env[k]) for k in IMPORT_ENV_KEYS if k in env))
        return cls(tuple(preload), import_env, python)

    @property
    def key(self) -> tuple:
        return ((), ()) if self.fresh else (self.preload, self.import_env)


def agent_name(node_id: str) -> str:
    return f"{AGENT_PREFIX}{node_id}"


def code_fingerprint() -> str:
    """sha256 of the sources an agent runs: a cluster's agent started by other gosok code
    is not used."""
    digest = hashlib.sha256()
    modules = (zygote, forked, script_runner, workers, node_report, progress, sys.modules[__name__])
    for module in modules:
        with contextlib.suppress(OSError, TypeError):
            digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


@dataclass
class _Job:
    key: str
    pg: Any
    slots: dict[int, Any] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)
    sampling: SamplingSlot = field(default_factory=SamplingSlot)
    reporter: NodeReporter = field(default_factory=NodeReporter)
    report_lock: threading.Lock = field(default_factory=threading.Lock)
    call_lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time


@dataclass
class _Zygote:
    handle: zygote.Zygote
    fingerprint: str
    last_used: float = field(default_factory=time.monotonic)


@ray.remote(num_cpus=0)
class NodeAgent:
    """This node's zygotes and the ranks started from them, per job."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.code = code_fingerprint()
        self._lock = threading.RLock()  # jobs
        self._zlock = threading.Lock()  # zygotes
        self._zygotes: dict[tuple, _Zygote] = {}
        self._retiring: list[_Zygote] = []
        self._failed: dict[tuple, tuple[str, str]] = {}  # key -> (fingerprint, reason)
        self._jobs: dict[str, _Job] = {}
        threading.Thread(target=self._watch, name="gosok-agent-watch", daemon=True).start()

    def describe(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "code": self.code,
            "port": free_port(""),
        }

    # -- zygotes

    def prepare(self, needs: WarmNeeds, job_env: dict[str, str]) -> dict[str, Any]:
        """Make sure a zygote for ``needs`` is up: ``describe()`` plus ``ok``, ``reason``,
        ``seconds``, ``started`` and ``pid`` (the zygote's). Refuses (ok False) what a fork
        could not give the ranks."""
        facts = self.describe()
        if not needs.fresh:
            if needs.python != sys.executable:
                return {
                    **facts,
                    **_no(
                        f"job.python={needs.python} is not the zygote's "
                        f"interpreter ({sys.executable})"
                    ),
                }
            differ = [
                k
                for k in forked.STARTUP_ENV_KEYS
                if k in job_env and job_env[k] != os.environ.get(k)
            ]
            if differ:
                return {
                    **facts,
                    **_no(
                        f"job.env sets {', '.join(differ)}, fixed when an interpreter starts and "
                        "different from the zygote's"
                    ),
                }
        started = time.monotonic()
        try:
            held, fresh = self._zygote_for(needs)
        except zygote.ZygoteError as err:
            return {**facts, **_no(str(err))}
        seconds = time.monotonic() - started
        return {
            **facts,
            "ok": True,
            "reason": "",
            "seconds": seconds,
            "started": fresh,
            "pid": held.handle.pid,
        }

    def _zygote_for(self, needs: WarmNeeds) -> tuple[_Zygote, bool]:
        key = needs.key
        with self._zlock:
            held = self._zygotes.get(key)
            if held is not None:
                try:
                    if not held.handle.stale():
                        held.last_used = time.monotonic()
                        return held, False
                    reason = "its Python environment changed on disk"
                except zygote.ZygoteError:
                    reason = "it stopped answering"
                print(f"gosok-agent: replacing the zygote for {key[0]}: {reason}", flush=True)
                self._retiring.append(self._zygotes.pop(key))
            preload = key[0]
            fingerprint = forked.env_fingerprint(preload)
            failed = self._failed.get(key)
            if failed is not None and failed[0] == fingerprint:
                raise zygote.ZygoteError(failed[1])
            self._evict(key)
            # The zygote's starting environment is what every rank forked from it shows as
            # its parent's: none of this agent's secrets (the node's Ray token). Ranks get
            # their job's environment with each spawn.
            env = {k: v for k, v in os.environ.items() if not is_secret_name(k)}
            env.update(dict(key[1]))
            tag = hashlib.sha1(repr(key).encode()).hexdigest()[:8]
            log = os.path.join(_logs_dir(), f"gosok-zygote-{self.node_id[:12]}-{tag}.log")
            try:
                handle = zygote.Zygote.start(preload, env, log)
            except zygote.ZygoteError as err:
                self._failed[key] = (fingerprint, self._failure(preload, err))
                raise zygote.ZygoteError(self._failed[key][1]) from err
            self._failed.pop(key, None)
            held = self._zygotes[key] = _Zygote(handle, fingerprint)
            return held, True

    def _failure(self, preload: tuple[str, ...], err: zygote.ZygoteError) -> str:
        """One line: the exception of a failed preload or a refusal from the zygote's log,
        else the error's first line."""
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", ln)]
        said = [ln.split("] ", 1)[-1] for ln in lines if "refusing" in ln or "preload of" in ln]
        detail = (raised or said or lines or ["no detail"])[-1]
        return (
            f"the zygote on node {self.node_id[:8]} could not start with "
            f"{', '.join(preload) or 'nothing'}: {detail}"
        )

    def _evict(self, key: tuple) -> None:
        """Make room for ``key``: at most MAX_ZYGOTES with preloads (the fresh ranks' zygote
        neither counts nor is evicted)."""
        heavy = [k for k in self._zygotes if k[0]]
        while key[0] and len(heavy) >= MAX_ZYGOTES:
            oldest = min(heavy, key=lambda k: self._zygotes[k].last_used)
            heavy.remove(oldest)
            self._retiring.append(self._zygotes.pop(oldest))

    def stop(self) -> int:
        """Stop every job's ranks and every zygote; the agent stays."""
        with self._lock:
            keys = list(self._jobs)
        for key in keys:
            self.stop_job(key, grace_s=0.0)
        with self._zlock:
            held = list(self._zygotes.values()) + self._retiring
            self._zygotes.clear()
            self._retiring.clear()
        for item in held:
            item.handle.stop(1.0)
        return len(held)

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
        """Start this node's ranks of a job: ``ranks`` = [{"rank", "env"}] (the rank's
        torchrun env); ``spec`` as for ``script_runner.spawn_rank``. A rank that cannot
        start answers ``failed`` (its rank, the error's type and text)."""
        held = self._zygotes.get(needs.key)
        if held is None:
            return _no("the zygote for this job is gone (prepare first)")
        held.last_used = time.monotonic()
        with self._lock:
            job = self._jobs.setdefault(job_key, _Job(job_key, pg))
        placement = []
        for item in ranks:
            slot = SimpleNamespace(rank=int(item["rank"]), node_id=self.node_id, state={})
            base = dict(os.environ)
            base.update(item["env"])
            base["RAY_JOB_ID"] = ray_job_id
            ours = theirs = None
            if spec.get("calls"):  # a benchmark's rank: it serves the driver's calls
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                slot.state["calls"] = ours
            channel = None if theirs is None else theirs.fileno()
            try:
                info = script_runner.spawn_rank(
                    slot, spec, held.handle, base, job.wake.set, needs.fresh, channel
                )
            except (OSError, ValueError, zygote.ZygoteError) as err:
                if ours is not None:
                    ours.close()
                self.stop_job(job_key, grace_s=0.0)
                failed = {"rank": slot.rank, "type": type(err).__name__, "text": str(err)}
                return {
                    **_no(f"the zygote on node {self.node_id[:8]} refused: {err}"),
                    "failed": failed,
                }
            finally:
                if theirs is not None:  # the child holds its own copy
                    theirs.close()
            with self._lock:
                job.slots[slot.rank] = slot
                stopped = self._jobs.get(job_key) is not job
            if stopped:  # the job was stopped meanwhile: so is what was just started
                if ours is not None:
                    ours.close()
                script_runner.stop_rank(slot, grace_s=0.0)
                return _no(f"job {job_key} was stopped while its ranks were starting")
            placement.append(info)
        return {"ok": True, "reason": "", "placement": placement}

    def _job(self, job_key: str) -> _Job | None:
        with self._lock:
            return self._jobs.get(job_key)

    def report(self, job_key: str, wait_s: float = 0.0) -> dict[str, Any] | None:
        """One report on all of this node's ranks of the job (``node_report.py``), None when
        the job is unknown here; waits up to ``wait_s`` for a rank of the job to end first."""
        job = self._job(job_key)
        if job is None:
            return None
        if wait_s > 0 and not job.wake.is_set():
            job.wake.wait(wait_s)
        job.wake.clear()
        with job.report_lock:
            for slot in list(job.slots.values()):
                job.reporter.add(script_runner.poll_rank(slot))
            return job.reporter.report()

    def call(self, job_key: str, payload: bytes, timeout_s: float) -> list[tuple] | None:
        """Relay one driver call (``workers.py``) to each of this node's ranks of the job:
        ``(rank, answer, "")`` each, or ``(rank, None, why)`` for a rank that did not
        answer (its channel is then closed: a late answer would answer the next call).
        None when the job is unknown here."""
        job = self._job(job_key)
        if job is None:
            return None
        with job.call_lock:
            return self._relay(job, payload, timeout_s)

    def _relay(self, job: _Job, payload: bytes, timeout_s: float) -> list[tuple]:
        deadline = time.monotonic() + timeout_s
        answers: dict[int, tuple] = {}
        waiting: dict[Any, Any] = {}  # channel -> slot
        for rank, slot in sorted(job.slots.items()):
            try:
                sock = slot.state["calls"]
                sock.settimeout(timeout_s)
                forked.send_message(sock, payload)
                waiting[sock] = slot
            except (OSError, KeyError) as err:
                answers[rank] = (rank, None, self._lost(slot, f"cannot be called: {err!r}"))
        with selectors.DefaultSelector() as ready:
            for sock in waiting:
                ready.register(sock, selectors.EVENT_READ)
            while waiting and (left := deadline - time.monotonic()) > 0:
                for key, _ in ready.select(left):
                    slot = waiting.pop(key.fileobj)
                    ready.unregister(key.fileobj)
                    try:  # an answer has begun: read it whole
                        key.fileobj.settimeout(max(deadline - time.monotonic(), 1.0))
                        answer = forked.read_message(key.fileobj)
                        why = "" if answer is not None else self._lost(slot, "ended")
                    except OSError as err:
                        answer, why = None, self._lost(slot, f"cannot be read: {err!r}")
                    answers[slot.rank] = (slot.rank, answer, why)
        for slot in waiting.values():
            why = self._lost(slot, f"gave no answer in {timeout_s:g} s")
            answers[slot.rank] = (slot.rank, None, why)
        return [answers[rank] for rank in sorted(answers)]

    def _lost(self, slot: Any, why: str) -> str:
        with contextlib.suppress(KeyError, OSError):
            slot.state.pop("calls").close()
        child = slot.state.get("child")
        code = child["proc"].poll() if child else None
        ended = f" (exit code {code})" if code is not None else ""
        return f"rank {slot.rank} on {socket.gethostname()} {why}{ended}"

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
        for slot in slots:
            with contextlib.suppress(KeyError, OSError):
                slot.state.pop("calls").close()
        with concurrent.futures.ThreadPoolExecutor(max(1, len(slots))) as pool:
            codes = list(pool.map(lambda s: script_runner.stop_rank(s, grace_s), slots))
        return {slot.rank: code for slot, code in zip(slots, codes, strict=True)}

    # -- utilisation sampling for the goodput ledger

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

    # -- the watch: jobs whose driver ended, zygotes replaced while busy

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            with contextlib.suppress(Exception):
                self._watch_once()

    def _watch_once(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            with contextlib.suppress(Exception):  # one job's trouble does not skip the rest
                if job.pg is not None and _pg_removed(job.pg):
                    print(
                        f"gosok-agent: stopping the ranks of job {job.key}: its placement "
                        "group was removed (its driver ended)",
                        flush=True,
                    )
                    self.stop_job(job.key, grace_s=0.0)
        with self._zlock:
            idle = []
            for item in list(self._retiring):
                with contextlib.suppress(zygote.ZygoteError):
                    if item.handle.hello()["live"]:
                        continue
                self._retiring.remove(item)
                idle.append(item)
        for item in idle:
            item.handle.stop(1.0)


def _no(reason: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "seconds": 0.0, "started": False, "pid": None}


def _logs_dir() -> str:
    """This node's Ray log directory (zygote logs go beside the workers' and go away with
    the Ray session), else this user's own 0700 directory for rank files (never a shared
    /tmp, where another user could plant a link at the log's name)."""
    with contextlib.suppress(Exception):
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    import tempfile

    from gosok.launcher.ranks.private import private_dir

    return str(private_dir(Path(tempfile.gettempdir()) / f"gosok-ranks-{os.getuid()}"))


def _pg_removed(pg: Any) -> bool:
    table = ray.util.placement_group_table(pg)
    return not table or table.get("state") == "REMOVED"


def new_agent(node_id: str, kept: bool = False) -> Any:
    """An agent pinned to ``node_id``: the launch's own, or (``kept``) the cluster's."""
    options: dict[str, Any] = {}
    if kept:
        options = {
            "name": agent_name(node_id),
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "get_if_exists": True,
        }
    return NodeAgent.options(
        num_cpus=0,
        max_concurrency=AGENT_CONCURRENCY,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        **options,
    ).remote(node_id)


def cluster_agent(node_id: str) -> Any | None:
    with contextlib.suppress(ValueError):
        return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    return None


def start_cluster_agents(preload: tuple[str, ...] = ("torch",), timeout_s: float = 300) -> int:
    """The cluster's agents (one per alive node, connected driver), each with a zygote
    for ``preload`` started: what ``gosok cluster up`` leaves warm for the launches."""
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    agents = [new_agent(node_id, kept=True) for node_id in nodes]
    ready = ray.get([a.prepare.remote(WarmNeeds(preload=preload), {}) for a in agents],
                    timeout=timeout_s)  # fmt: skip
    return sum(bool(r["ok"]) for r in ready)
