"""The restart loop of ``gosok launch``: place the ranks, start every rank's process, watch
them, and on a failure tear the group down and start again from the latest checkpoint.

One node agent per node serves the whole launch (``rank_group.AgentPool``); one attempt
= one ``RankGroup``: a placement group and each rank's process forked from its node's
zygote (or, with ``launch.fresh_process=true`` or when the zygote cannot serve the job, a
fresh ``script_runner`` interpreter). The driver polls every ``fault.poll_s`` (answered at
once when a rank exits): exit codes, heartbeats (step, loss, tokens/s) and new output of the tee
ranks. An attempt ends when

- every rank exited 0 (success);
- a rank's node agent is dead or unreachable (node or worker lost:
  infrastructure, retried; its node goes on the blocklist when a spare node can take its
  place);
- a rank was killed by a signal (infrastructure, retried);
- a rank exited non-zero (retried, but the same failure ``same_failure_limit`` times in a
  row is taken as a config or code error and the job stops);
- no rank's step moved for ``fault.hang_timeout_s`` (hang: the stuck rank, its node and
  its Python stack dump are recorded; retried).

At most ``fault.max_failures`` restarts. The blocklist lasts for the whole run. Whether to
restart, and which nodes to leave out, is decided by ``policy.RestartPolicy`` (pure; the
supervisor only reports how each attempt ended and which nodes could host ranks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gosok.launcher.config.secrets import current
from gosok.launcher.errors import ENVIRONMENT_ERRORS, GosokError, RankStartError
from gosok.launcher.launch.monitor import GroupWatch, Verdict, WatchPolicy
from gosok.launcher.launch.placement import alive_nodes, slots_of
from gosok.launcher.launch.policy import NOT_RETRIED, Ended, RestartPolicy
from gosok.launcher.launch.rank_group import AgentPool, RankGroup, WarmNeeds
from gosok.launcher.ranks.plan import backend_for
from gosok.launcher.ranks.script_runner import Program
from gosok.launcher.results.store import atomic_write_bytes

DRAIN_POLLS = 20
DRAIN_TIMEOUT_S = 10.0
EXIT_GRACE_S = 4.0
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")
DISK_FULL = re.compile(r"No space left on device|ENOSPC|Errno 28|Disk quota exceeded")


@dataclass
class RunSpec:
    """Everything an attempt needs that does not change between attempts."""

    program: Program
    cwd: str
    env: dict[str, str]  # every rank, printable (no secrets)
    rank_env: dict[str, dict[str, str]]  # per rank (e.g. rank 0's W&B key); never printed
    log_root: Path
    tee_ranks: list[int]
    expect_heartbeat: bool
    total_steps: int | None
    preload: tuple[str, ...] = ("torch",)  # what the nodes' zygotes import for this job
    fresh_process: bool = False  # launch.fresh_process
    profile: bool = False  # launch.profile: ranks write start-up marks
    checkpoint_key: bytes | None = None  # authenticates the recipe's checkpoint manifest
    # The script's directory, shipped to every node: {sha256, data, files}, and the
    # script's path inside it.
    code: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttemptOutcome:
    attempt: int
    ok: bool
    kind: str  # ok | exit | signal | node_lost | worker_lost | hang | startup_timeout | placement
    infra: bool
    message: str = ""
    signature: str = ""
    failed_node_ids: list[str] = field(default_factory=list)
    stuck_rank: int | None = None
    stuck_node_id: str | None = None
    stack_file: str | None = None
    placement: list[dict[str, Any]] = field(default_factory=list)
    last_step: int | None = None
    started_unix: float = 0.0
    first_beat_unix: float | None = None
    ended_unix: float = 0.0
    rank_start: dict[str, Any] = field(default_factory=dict)  # warm or fresh, and why
    rank0_beat: dict[str, Any] | None = None  # rank 0's last heartbeat (the recipe's result)
    timings: dict[str, Any] = field(default_factory=dict)  # launch.profile
    # What the failed rank recorded with torch's @record (TORCHELASTIC_ERROR_FILE):
    # {rank, host, message, timestamp, traceback_file}
    error: dict[str, Any] | None = None


@dataclass
class PollView:
    """What an observer sees of one poll."""

    beat0: dict[str, Any] | None  # rank 0's latest heartbeat
    pids: dict[int, Any]  # by rank
    ending: bool  # the attempt ends with this poll


@dataclass
class SupervisorResult:
    ok: bool
    attempts: list[AttemptOutcome]
    blocklist: list[str]
    message: str = ""


def _signal_name(returncode: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(-returncode).name
    return f"signal {-returncode}"


class Supervisor:
    def __init__(
        self, cluster: Any, fault: Any, spec: RunSpec, console: Console, observer: Any = None
    ) -> None:
        self.cluster = cluster
        self.fault = fault
        self.spec = spec
        self.console = console
        self.blocklist: list[str] = []
        self.attempts: list[AttemptOutcome] = []
        self._errors: dict[int, dict[str, Any]] = {}  # this attempt's @record errors by rank
        self.progress: Progress | None = None
        self.task: Any = None
        # Told of each attempt's start, polls and end (e.g. ``ledger.recorder.LaunchRecorder``).
        self.observer = observer
        self.agents = AgentPool(keep=cluster.kind == "local")

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> SupervisorResult:
        try:
            return self._run()
        finally:
            self.agents.close()

    def _run(self) -> SupervisorResult:
        policy = RestartPolicy(self.fault, nodes_needed=self.cluster.nodes)
        self.blocklist = policy.blocklist
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(
                "step {task.completed:.0f}"
                + (f"/{self.spec.total_steps}" if self.spec.total_steps else "")
            ),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self.progress = progress
            self.task = progress.add_task(
                "training", total=self.spec.total_steps, status="starting", completed=0
            )
            attempt = 0
            while True:
                outcome = self._attempt(attempt)
                self._notify("on_attempt_end", outcome)
                self.attempts.append(outcome)
                if not outcome.ok:
                    why = escape(outcome.message)
                    self._say(f"[bold red]attempt {attempt} failed[/] ({outcome.kind}): {why}")
                ended = Ended(
                    outcome.kind, outcome.infra, outcome.signature,
                    tuple(outcome.failed_node_ids),
                )  # fmt: skip
                usable = self._usable_nodes() if outcome.failed_node_ids else []
                decision = policy.after(ended, usable)
                if decision.ok:
                    return SupervisorResult(True, self.attempts, self.blocklist)
                if not decision.restart:
                    retried = outcome.kind not in NOT_RETRIED
                    message = escape(decision.message) if retried else outcome.message
                    return SupervisorResult(False, self.attempts, self.blocklist, message)
                if decision.excluded:
                    excluded = [n[:8] for n in decision.excluded]
                    self._say(f"excluding node(s) {excluded} (failover to spare nodes)")
                if decision.kept:
                    kept = [n[:8] for n in decision.kept]
                    self._say(f"no spare node to replace {kept}: keeping them in the pool")
                attempt += 1
                self._say(
                    f"restarting (restart {attempt}/{self.fault.max_failures}) from the latest "
                    f"checkpoint; blocklist: {[n[:8] for n in self.blocklist] or 'empty'}"
                )

    def _usable_nodes(self) -> list[str]:
        """Live nodes with room for one node's ranks (the policy's failover candidates)."""
        backend_key = backend_for(self.cluster.gpu)
        return [
            n["NodeID"]
            for n in alive_nodes()
            if slots_of(n, backend_key) >= self.cluster.gpus_per_node
        ]

    def _notify(self, event: str, *args: Any) -> None:
        """Call the observer; what it does never fails the job."""
        if self.observer is not None:
            with contextlib.suppress(Exception):
                getattr(self.observer, event)(*args)

    def _say(self, text: str) -> None:
        assert self.progress is not None
        self.progress.console.print(text, highlight=False)

    # ---- one attempt ------------------------------------------------------------------

    def _attempt(self, attempt: int) -> AttemptOutcome:
        started = time.time()
        self._errors = {}
        self._notify("on_attempt_start", attempt, started)
        env = {
            **self.spec.env,
            "GOSOK_RESTART_COUNT": str(attempt),
            "TORCHELASTIC_RESTART_COUNT": str(attempt),
        }
        resume = self._resume_step()
        if resume is not None:
            env["GOSOK_RESUME_STEP"] = str(resume)  # decided once, the same on every rank
        group = RankGroup(
            self.agents,
            self.cluster,
            env,
            WarmNeeds.for_job(self.spec.program.python, self.spec.env, self.spec.preload),
            job_env=self.spec.env,
            fresh_process=self.spec.fresh_process,
            timeout_s=self.fault.placement_timeout_s,
            exclude_node_ids=tuple(self.blocklist),
        )
        assert self.progress is not None
        self.progress.update(self.task, status=f"placing ranks (attempt {attempt})")
        self._wait_for_nodes()
        try:
            group.start()
        except (GosokError, ray.exceptions.RayError) as err:
            group.shutdown()
            return AttemptOutcome(
                attempt, False, "placement", True, f"could not place the ranks: {err}",
                started_unix=started, ended_unix=time.time(),
            )  # fmt: skip
        try:
            return self._watch(attempt, group, started)
        finally:
            self.progress.update(self.task, status="tearing down")
            self._drain(group, self.spec.log_root / f"attempt-{attempt}")
            group.shutdown()

    def _drain(self, group: RankGroup, log_dir: Path) -> None:
        """Bring back what the ranks printed since the last poll (their logs live on their
        own nodes) before the group is torn down."""
        for _ in range(DRAIN_POLLS):
            try:
                reports, _ = group.poll(0.0, DRAIN_TIMEOUT_S)
            except Exception:  # noqa: BLE001  (nodes gone: what arrived is what there is)
                return
            if not self._record_output(reports, log_dir):
                return

    def _record_output(self, reports: dict[int, dict], log_dir: Path) -> bool:
        """Append each rank's new output to ``<log_dir>/rank-<r>.log`` on this machine, and
        show the tee ranks' on the terminal. True when anything arrived."""
        arrived = False
        for node in sorted(reports):
            self._errors.update({int(r): e for r, e in reports[node].get("errors", {}).items()})
            for rank, text in sorted(reports[node].get("output", {}).items()):
                if not text:
                    continue
                arrived = True
                log_dir.mkdir(parents=True, exist_ok=True)
                text = current().text(text)
                path = log_dir / f"rank-{rank}.log"
                with open(os.open(path, LOG_FLAGS, 0o600), "a", encoding="utf-8") as handle:
                    handle.write(text)
                if rank in self.spec.tee_ranks:
                    self._tee(rank, text)
        return arrived

    def _resume_step(self) -> int | None:
        """For jobs that checkpoint through gosok (the recipe): the step every rank resumes
        from, read once from the manifest here (0: from scratch)."""
        directory = self.spec.env.get("GOSOK_CHECKPOINT_DIR")
        if not self.spec.expect_heartbeat or not directory:
            return None
        from gosok.launcher.launch.checkpoint import CheckpointStore

        try:
            entry = CheckpointStore(directory, key=self.spec.checkpoint_key).resume_point()
        except (OSError, ValueError) as err:
            self._say(f"checkpoints unreadable ({escape(str(err))}); starting from scratch")
            return 0
        if entry is not None:
            self._say(f"resuming every rank from step {entry.step}")
        return entry.step if entry else 0

    def _wait_for_nodes(self) -> None:
        """Give nodes that are still joining (or restarting) time before placing."""
        backend = backend_for(self.cluster.gpu)
        deadline = time.monotonic() + self.fault.placement_timeout_s
        while time.monotonic() < deadline:
            usable = [
                n for n in alive_nodes()
                if n["NodeID"] not in self.blocklist
                and slots_of(n, backend) >= self.cluster.gpus_per_node
            ]  # fmt: skip
            if len(usable) >= self.cluster.nodes:
                return
            time.sleep(1.0)

    def _watch(self, attempt: int, group: RankGroup, started: float) -> AttemptOutcome:
        spec = self.spec
        log_dir = spec.log_root / f"attempt-{attempt}"
        spawn = {
            "program": dataclasses.asdict(spec.program),
            "env": {},
            "rank_env": spec.rank_env,
            "cwd": spec.cwd,
            "log_dir": str(log_dir),
            "tee_ranks": spec.tee_ranks,
            "profile": spec.profile,
            **spec.code,
        }
        outcome = AttemptOutcome(attempt, False, "", False, started_unix=started)
        try:
            placement = group.spawn(spawn)
        except (GosokError, ray.exceptions.RayError, OSError, ValueError) as err:
            return self._spawn_failed(outcome, group, err)
        for entry in placement:  # where each rank runs, as its node sees itself
            info = group.rank_info[int(entry["rank"])]
            entry.setdefault("hostname", info.get("hostname"))
            entry.setdefault("ip", info.get("ip"))
        outcome.placement = placement
        node_ids = {int(i["node_rank"]): i["node_id"] for i in group.rank_info}
        hosts = {int(i["node_rank"]): i.get("hostname", "") for i in group.rank_info}
        record = {"attempt": attempt, "placement": placement, "log_dir": str(log_dir)}
        atomic_write_bytes(log_dir / "placement.json", json.dumps(record, indent=1).encode())
        self._say_rank_start(group, outcome)
        fault = self.fault
        watch = GroupWatch(
            WatchPolicy(
                world=group.world,
                missed_reports=fault.missed_reports,
                hang_timeout_s=fault.hang_timeout_s,
                startup_timeout_s=fault.startup_timeout_s if spec.expect_heartbeat else None,
            ),
            nodes=len(node_ids),
            now=time.monotonic(),
        )
        pids = {int(p["rank"]): p.get("pid") for p in placement}
        self.progress.update(self.task, status=f"running (attempt {attempt}, restarts {attempt})")
        while True:
            reports, dead = group.poll(fault.poll_s, fault.report_timeout_s)
            verdict = watch.observe(reports, dead, time.monotonic())
            self._record_output(reports, log_dir)
            if spec.profile:
                marks = next((r for r in reports.values() if "marks" in r), None)
                if marks is not None:
                    outcome.timings["rank0"] = {k: marks[k] for k in ("marks", "spawn_unix")}
            outcome.rank0_beat = watch.beat0 or outcome.rank0_beat
            outcome.first_beat_unix = watch.first_beat_unix
            outcome.last_step = watch.step
            self._show(watch, attempt)
            self._notify(
                "on_poll", attempt, group,
                PollView(watch.beat0, pids, ending=verdict is not None),
            )  # fmt: skip
            if verdict is None:
                continue
            if verdict.kind == "exit":
                verdict = self._root_cause(group, watch, verdict)
            outcome.ended_unix = time.time()
            if verdict.kind == "ok":
                outcome.ok, outcome.kind, outcome.message = True, "ok", "every rank exited 0"
                return outcome
            if verdict.kind == "lost":
                return self._lost(outcome, verdict, node_ids, hosts, group)
            if verdict.kind == "exit":
                return self._failed_exit(outcome, group, verdict)
            if verdict.kind == "hang":
                return self._hang(outcome, group, verdict, watch)
            outcome.kind, outcome.infra = "startup_timeout", True
            outcome.message = (
                f"no rank reported a step within fault.startup_timeout_s={fault.startup_timeout_s}"
            )
            return outcome

    def _root_cause(self, group: RankGroup, watch: GroupWatch, verdict: Verdict) -> Verdict:
        """A lost node makes its peers fail fast with connection errors: before blaming the
        first rank that exited, hear from every node once more (a node that does not answer
        within ``EXIT_GRACE_S`` may be the lost root cause, which then wins)."""
        deadline = time.monotonic() + EXIT_GRACE_S
        heard: set[int] = set()
        while time.monotonic() < deadline and len(heard) < len(watch.nodes):
            reports, dead = group.poll(0.0, 1.0)
            self._record_output(reports, self.spec.log_root / f"attempt-{len(self.attempts)}")
            if dead:
                return Verdict("lost", lost=dead)
            heard.update(reports)
            later = watch.observe(reports, {}, time.monotonic())
            if later is not None and later.kind == "exit":
                verdict = later
            if len(heard) < len(watch.nodes):
                time.sleep(0.1)
        return verdict

    def _spawn_failed(
        self, outcome: AttemptOutcome, group: RankGroup, err: Exception
    ) -> AttemptOutcome:
        """The ranks could not be started. A node that died or went silent meanwhile is
        infrastructure (retried elsewhere); a node that cannot run the job (no such
        interpreter or script, no permission) is the job's environment: not retried
        past the same-failure rule."""
        outcome.ended_unix = time.time()
        cause = getattr(err, "cause", None) or err
        nodes = sorted({i["node_id"] for i in group.rank_info} & self._dead_nodes())
        detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        outcome.kind = "spawn"
        outcome.failed_node_ids = nodes
        if isinstance(err, RankStartError) and not nodes:
            outcome.infra = not isinstance(cause, ENVIRONMENT_ERRORS)
            outcome.failed_node_ids = [err.node_id]  # a spare node may have what it lacks
            outcome.message = f"{err}"
        else:
            outcome.infra = True
            where = f" (node(s) {[n[:8] for n in nodes]} died)" if nodes else ""
            outcome.message = f"starting the ranks failed{where}: {type(cause).__name__}: {detail}"
        outcome.signature = normalised(f"spawn {type(cause).__name__}: {detail}")
        return outcome

    def _say_rank_start(self, group: RankGroup, outcome: AttemptOutcome) -> None:
        """One line on how the ranks were started: on the first attempt, then on change."""
        outcome.rank_start = group.start_record()
        outcome.timings.update(group.timings)
        if not self.attempts or self.attempts[-1].rank_start != outcome.rank_start:
            assert self.progress is not None
            self.progress.console.print(group.start_line(), markup=False, highlight=False)

    def _tee(self, rank: int, text: str) -> None:
        if not text:
            return
        prefix = f"[rank {rank}] " if len(self.spec.tee_ranks) > 1 else ""
        for line in text.rstrip("\n").split("\n"):
            self.progress.console.print(prefix + line, markup=False, highlight=False)

    def _show(self, watch: GroupWatch, attempt: int) -> None:
        beat = watch.beat0 or {}
        status = f"restarts {attempt}"
        if "loss" in beat:
            status = (
                f"loss {beat['loss']:.4f} | tokens/s {beat.get('tokens_per_s', 0):.0f} | {status}"
            )
        self.progress.update(self.task, completed=watch.step or 0, status=status)

    def _dead_nodes(self) -> set[str]:
        with contextlib.suppress(Exception):
            return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
        return set()

    def _lost(self, outcome, verdict: Verdict, node_ids, hosts, group) -> AttemptOutcome:
        nodes = sorted(verdict.lost)
        ids = [node_ids[n] for n in nodes]
        dead = self._dead_nodes()
        ranks = [int(i["rank"]) for i in group.rank_info if int(i["node_rank"]) in verdict.lost]
        outcome.infra = True
        outcome.kind = "node_lost" if any(n in dead for n in ids) else "worker_lost"
        outcome.failed_node_ids = ids
        why = "; ".join(
            f"{hosts.get(n) or 'node'} ({node_ids[n][:8]}): {verdict.lost[n]}" for n in nodes
        )
        outcome.message = f"rank(s) {ranks} lost with their node(s): {why}"
        return outcome

    def _failed_exit(self, outcome, group, verdict: Verdict) -> AttemptOutcome:
        rank, code = verdict.rank, verdict.code
        outcome.failed_node_ids = []
        if code < 0:
            outcome.kind, outcome.infra = "signal", True
            outcome.message = f"rank {rank} was killed by {_signal_name(code)}"
            outcome.signature = f"signal {code}"
            return outcome
        tail = ""
        with contextlib.suppress(Exception):
            tail = group.log_tail(rank)
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        last = RANK_PREFIX.sub("", last)  # torch's "[rank0]: " on a rank's error output
        recorded = self._recorded_error(outcome, group, rank)
        if recorded:
            last = recorded
        outcome.signature = f"exit {code}: {normalised(last)}"
        if DISK_FULL.search(tail):
            outcome.kind, outcome.infra = "disk_full", False
            outcome.message = (
                f"rank {rank} ran out of disk space ({last}); the checkpoints already written "
                "are intact: free space (or point checkpoint.dir elsewhere) and launch again "
                "to resume from the latest one"
            )
            return outcome
        outcome.kind, outcome.infra = "exit", False
        if outcome.error:
            outcome.message = (
                f"rank {rank} on {outcome.error['host']} failed with {last} (exit code {code}; "
                f"recorded by @record, traceback in {outcome.error['traceback_file']})"
            )
        else:
            outcome.message = f"rank {rank} exited with code {code}: {last or '(no output)'}"
        return outcome

    def _recorded_error(self, outcome: AttemptOutcome, group: Any, rank: int) -> str:
        """The exception a rank recorded in its TORCHELASTIC_ERROR_FILE (torch's
        ``errors.record``), as torchrun reports it: type and message, rank, host, with the
        traceback kept beside the attempt's logs. Empty when the rank recorded none."""
        error = self._errors.get(rank)
        if not error or not error.get("message"):
            return ""
        host = group.rank_info[rank].get("hostname") or group.rank_info[rank]["node_id"][:8]
        path = self.spec.log_root / f"attempt-{outcome.attempt}" / f"error-rank-{rank}.json"
        record = current().data({"rank": rank, "host": host, **error})
        atomic_write_bytes(path, json.dumps(record, indent=1).encode())
        outcome.error = {
            "rank": rank, "host": host, "message": record["message"],
            "timestamp": error.get("timestamp", ""), "traceback_file": str(path),
        }  # fmt: skip
        return record["message"]

    def _hang(self, outcome, group, verdict: Verdict, watch: GroupWatch) -> AttemptOutcome:
        stuck = verdict.rank
        info = group.rank_info[stuck]
        stack = ""
        with contextlib.suppress(Exception):
            stack = group.dump_stack(stuck)
        stack_file = (
            self.spec.log_root / f"attempt-{outcome.attempt}" / f"hang-rank-{stuck}.stack.txt"
        )
        atomic_write_bytes(stack_file, (stack or "(no stack dump received)\n").encode())
        outcome.kind, outcome.infra = "hang", True
        outcome.stuck_rank, outcome.stuck_node_id = stuck, info["node_id"]
        outcome.failed_node_ids = [info["node_id"]]
        outcome.stack_file = str(stack_file)
        where = info.get("hostname") or info["node_id"][:8]
        outcome.message = (
            f"no rank made progress for {verdict.stuck_for_s:.0f}s "
            f"(fault.hang_timeout_s={self.fault.hang_timeout_s}): rank {stuck} on {where} "
            f"({info['node_id'][:8]}) is furthest behind; its stack is in {stack_file}"
        )
        self._say(f"[bold yellow]hang[/]: {escape(outcome.message)}")
        if stack:
            self.progress.console.print(stack.rstrip(), markup=False, highlight=False)
        return outcome


def normalised(text: str) -> str:
    """A failure's signature without what changes from run to run (addresses, numbers:
    pids, ports, timestamps, ranks), so the same fault compares equal across attempts."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    text = re.sub(r"\b[0-9a-f]{8,}\b", "<id>", text)
    return re.sub(r"\d+(\.\d+)?", "N", text).strip()


def outcome_dicts(attempts: list[AttemptOutcome]) -> list[dict[str, Any]]:
    return [asdict(a) for a in attempts]
