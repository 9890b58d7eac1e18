"""The restart loop of ``gosok launch``: place the ranks, start every rank's process, watch
them, and on a failure tear the group down and start again from the latest checkpoint.

One attempt = one ``LaunchRanks`` (``ranks/warm_pool.py``): a placement group and each
rank's process forked from its node's warm server (or, with ``launch.fresh_process=true``
or when the warm servers cannot serve the job, one actor per rank starting a fresh
``script_runner``). The driver polls every ``fault.poll_s`` (warm: answered at once when a
rank exits): exit codes, heartbeats (step, loss, tokens/s) and new output of the tee
ranks. An attempt ends when

- every rank exited 0 (success);
- a rank's actor or node holder is dead or unreachable (node or worker lost:
  infrastructure, retried; its node goes on the blocklist when a spare node can take its
  place);
- a rank was killed by a signal (infrastructure, retried);
- a rank exited non-zero (retried, but the same failure ``same_failure_limit`` times in a
  row is taken as a config or code error and the job stops);
- no rank's step moved for ``fault.hang_timeout_s`` (hang: the stuck rank, its node and
  its Python stack dump are recorded; retried).

At most ``fault.max_failures`` restarts. The blocklist lasts for the whole run.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gosok.launcher.errors import GosokError
from gosok.launcher.ranks.plan import backend_for
from gosok.launcher.ranks.warm_pool import LaunchRanks, WarmNeeds
from gosok.launcher.ranks.workers import alive_nodes, slots_of
from gosok.launcher.results.store import atomic_write_bytes

UNREACHABLE_S = 10.0
DRAIN_POLLS = 20
EXIT_GRACE_S = 4.0


@dataclass
class RunSpec:
    """Everything an attempt needs that does not change between attempts."""

    argv: list[str]
    cwd: str
    env: dict[str, str]  # every rank, printable (no secrets)
    rank_env: dict[str, dict[str, str]]  # per rank (e.g. rank 0's W&B key); never printed
    log_root: Path
    tee_ranks: list[int]
    expect_heartbeat: bool
    total_steps: int | None
    preload: tuple[str, ...] = ("torch",)  # what the warm servers import for this job
    fresh_process: bool = False  # launch.fresh_process
    profile: bool = False  # launch.profile: ranks write start-up marks
    # The script's directory, shipped to every node: {sha256, data, files}, the script's
    # path inside it, and which argv item is the script.
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
        self.progress: Progress | None = None
        self.task: Any = None
        # Told of each attempt's start, polls and end (e.g. ``ledger.recorder.LaunchRecorder``).
        self.observer = observer

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> SupervisorResult:
        failures = 0
        same = 0
        last_signature = ""
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
                if outcome.ok:
                    return SupervisorResult(True, self.attempts, self.blocklist)
                failures += 1
                if outcome.infra:
                    same, last_signature = 0, ""
                else:
                    same = same + 1 if outcome.signature == last_signature else 1
                    last_signature = outcome.signature
                self._say(
                    f"[bold red]attempt {attempt} failed[/] ({outcome.kind}): {outcome.message}"
                )
                if not outcome.infra and same >= self.fault.same_failure_limit:
                    msg = (
                        f"the same failure happened {same} time(s) in a row "
                        f"({outcome.signature}); this looks like a config or code error, "
                        "not an infrastructure fault: not retrying"
                    )
                    return SupervisorResult(False, self.attempts, self.blocklist, msg)
                if failures > self.fault.max_failures:
                    limit = self.fault.max_failures
                    msg = f"gave up after {failures} failure(s) (fault.max_failures={limit})"
                    return SupervisorResult(False, self.attempts, self.blocklist, msg)
                self._update_blocklist(outcome)
                attempt += 1
                self._say(
                    f"restarting (restart {attempt}/{self.fault.max_failures}) from the latest "
                    f"checkpoint; blocklist: {[n[:8] for n in self.blocklist] or 'empty'}"
                )

    def _notify(self, event: str, *args: Any) -> None:
        """Call the observer; what it does never fails the job."""
        if self.observer is not None:
            with contextlib.suppress(Exception):
                getattr(self.observer, event)(*args)

    def _say(self, text: str) -> None:
        assert self.progress is not None
        self.progress.console.print(text, highlight=False)

    def _update_blocklist(self, outcome: AttemptOutcome) -> None:
        if not self.fault.exclude_failed_nodes:
            return
        new = [n for n in outcome.failed_node_ids if n not in self.blocklist]
        if not new:
            return
        backend_key = backend_for(self.cluster.gpu)
        usable = [
            n["NodeID"]
            for n in alive_nodes()
            if slots_of(n, backend_key) >= self.cluster.gpus_per_node
            and n["NodeID"] not in self.blocklist + new
        ]
        if len(usable) >= self.cluster.nodes:
            self.blocklist += new
            self._say(f"excluding node(s) {[n[:8] for n in new]} (failover to spare nodes)")
        else:
            self._say(f"no spare node to replace {[n[:8] for n in new]}: keeping them in the pool")

    # ---- one attempt ------------------------------------------------------------------

    def _attempt(self, attempt: int) -> AttemptOutcome:
        started = time.time()
        self._notify("on_attempt_start", attempt, started)
        env = {**self.spec.env, "GOSOK_RESTART_COUNT": str(attempt)}
        resume = self._resume_step()
        if resume is not None:
            env["GOSOK_RESUME_STEP"] = str(resume)  # decided once, the same on every rank
        group = LaunchRanks(
            self.cluster,
            env,
            WarmNeeds.for_job(self.spec.argv, self.spec.env, self.spec.preload),
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

    def _drain(self, group: LaunchRanks, log_dir: Path) -> None:
        """Bring back what the ranks printed since the last poll (their logs live on their
        own nodes) before the group is torn down."""
        for _ in range(DRAIN_POLLS):
            try:
                answers, _ = group.poll(0.0, UNREACHABLE_S)
            except Exception:  # noqa: BLE001  (nodes gone: what arrived is what there is)
                return
            if not self._record_output(answers, log_dir):
                return

    def _record_output(self, answers: dict[int, dict], log_dir: Path) -> bool:
        """Append each rank's new output to ``<log_dir>/rank-<r>.log`` on this machine, and
        show the tee ranks' on the terminal. True when anything arrived."""
        arrived = False
        for rank in sorted(answers):
            text = answers[rank].get("output") or ""
            if not text:
                continue
            arrived = True
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / f"rank-{rank}.log", "a", encoding="utf-8") as handle:
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
            entry = CheckpointStore(directory).resume_point()
        except (OSError, ValueError) as err:
            self._say(f"checkpoints unreadable ({err}); starting from scratch")
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

    def _watch(self, attempt: int, group: LaunchRanks, started: float) -> AttemptOutcome:
        spec = self.spec
        log_dir = spec.log_root / f"attempt-{attempt}"
        spawn = {
            "argv": spec.argv,
            "env": {},
            "rank_env": spec.rank_env,
            "cwd": spec.cwd,
            "log_dir": str(log_dir),
            "tee_ranks": spec.tee_ranks,
            "profile": spec.profile,
            **spec.code,
        }
        placement = group.spawn(spawn)
        node_of = {p["rank"]: p["node_id"] for p in placement}
        record = {"attempt": attempt, "placement": placement, "log_dir": str(log_dir)}
        atomic_write_bytes(log_dir / "placement.json", json.dumps(record, indent=1).encode())
        outcome = AttemptOutcome(
            attempt, False, "", False, placement=placement, started_unix=started
        )
        self._say_rank_start(group, outcome)
        world = group.world
        steps: dict[int, int] = {}
        changed: dict[int, float] = {}
        spawned = time.monotonic()
        self.progress.update(self.task, status=f"running (attempt {attempt}, restarts {attempt})")
        while True:
            answers, lost = group.poll(self.fault.poll_s, UNREACHABLE_S)
            now = time.monotonic()
            if spec.profile and "marks" in answers.get(0, {}):
                outcome.timings["rank0"] = {k: answers[0][k] for k in ("marks", "spawn_unix")}
            self._record_output(answers, log_dir)
            if answers.get(0, {}).get("beat"):
                outcome.rank0_beat = answers[0]["beat"]
            for rank, answer in answers.items():
                beat = answer["beat"]
                if beat is None:
                    continue
                if outcome.first_beat_unix is None:
                    outcome.first_beat_unix = beat["unix"]
                if steps.get(rank) != beat["step"]:
                    steps[rank] = beat["step"]
                    changed[rank] = now
            self._show(steps, answers, attempt)
            self._notify("on_poll", attempt, group, answers)
            outcome.last_step = min(steps.values()) if steps else None
            if lost:
                return self._lost(outcome, lost, node_of)
            exits = {r: a["returncode"] for r, a in answers.items() if a["returncode"] is not None}
            if len(exits) == world and not any(exits.values()):
                outcome.ok, outcome.kind, outcome.message = True, "ok", "every rank exited 0"
                outcome.ended_unix = time.time()
                return outcome
            if any(exits.values()):
                return self._failed_exit(outcome, group, answers, node_of)
            if steps:
                first_change = min(changed.values())
                ages = {r: now - changed.get(r, first_change) for r in range(world)}
                if max(ages.values()) > self.fault.hang_timeout_s:
                    return self._hang(outcome, group, steps, changed, first_change, node_of)
            elif spec.expect_heartbeat and now - spawned > self.fault.startup_timeout_s:
                outcome.kind, outcome.infra = "startup_timeout", True
                outcome.message = (
                    f"no rank reported a step within fault.startup_timeout_s="
                    f"{self.fault.startup_timeout_s}"
                )
                outcome.ended_unix = time.time()
                return outcome

    def _poll(self, group: LaunchRanks) -> tuple[dict[int, dict], dict[int, str]]:
        return group.poll(0.0, UNREACHABLE_S)

    def _say_rank_start(self, group: LaunchRanks, outcome: AttemptOutcome) -> None:
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

    def _show(self, steps: dict[int, int], answers: dict[int, dict], attempt: int) -> None:
        beat = answers.get(0, {}).get("beat") or {}
        status = f"restarts {attempt}"
        if "loss" in beat:
            status = (
                f"loss {beat['loss']:.4f} | tokens/s {beat.get('tokens_per_s', 0):.0f} | {status}"
            )
        self.progress.update(
            self.task, completed=min(steps.values()) if steps else 0, status=status
        )

    def _dead_nodes(self) -> set[str]:
        with contextlib.suppress(Exception):
            return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}
        return set()

    def _lost(self, outcome: AttemptOutcome, lost: dict[int, str], node_of: dict[int, str]):
        nodes = sorted({node_of[r] for r in lost})
        dead = self._dead_nodes()
        outcome.infra = True
        outcome.kind = "node_lost" if any(n in dead for n in nodes) else "worker_lost"
        outcome.failed_node_ids = nodes
        outcome.message = (
            f"rank(s) {sorted(lost)} lost ({', '.join(sorted(set(lost.values())))}) "
            f"on node(s) {[n[:8] for n in nodes]}"
        )
        outcome.ended_unix = time.time()
        return outcome

    def _failed_exit(self, outcome, group, answers, node_of) -> AttemptOutcome:
        # A lost node makes its peers fail fast with connection errors: look again for a
        # short while so the root cause (the lost node) wins over its symptoms.
        deadline = time.monotonic() + EXIT_GRACE_S
        while time.monotonic() < deadline:
            time.sleep(0.5)
            more, lost = self._poll(group)
            answers.update(more)
            if lost:
                return self._lost(outcome, lost, node_of)
        failed = [
            (a["exit_unix"] or float("inf"), r, a["returncode"])
            for r, a in answers.items()
            if a["returncode"] not in (None, 0)
        ]
        _, rank, code = min(failed)
        outcome.failed_node_ids = []
        outcome.ended_unix = time.time()
        if code < 0:
            outcome.kind, outcome.infra = "signal", True
            outcome.message = f"rank {rank} was killed by {_signal_name(code)}"
            outcome.signature = f"signal {code}"
            return outcome
        tail = ""
        with contextlib.suppress(Exception):
            tail = group.log_tail(rank)
        last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        outcome.kind, outcome.infra = "exit", False
        outcome.signature = f"exit {code}: {last}"
        outcome.message = f"rank {rank} exited with code {code}: {last or '(no output)'}"
        return outcome

    def _hang(self, outcome, group, steps, changed, first_change, node_of) -> AttemptOutcome:
        world = group.world
        stuck = min(range(world), key=lambda r: (steps.get(r, -1), changed.get(r, first_change)))
        stack = ""
        with contextlib.suppress(Exception):
            stack = group.dump_stack(stuck)
        stack_file = (
            self.spec.log_root / f"attempt-{outcome.attempt}" / f"hang-rank-{stuck}.stack.txt"
        )
        atomic_write_bytes(stack_file, (stack or "(no stack dump received)\n").encode())
        outcome.kind, outcome.infra = "hang", True
        outcome.stuck_rank, outcome.stuck_node_id = stuck, node_of[stuck]
        outcome.failed_node_ids = [node_of[stuck]]
        outcome.stack_file = str(stack_file)
        outcome.message = (
            f"no progress for {self.fault.hang_timeout_s}s: rank {stuck} on node "
            f"{node_of[stuck][:8]} stuck at step {steps.get(stuck, 'none')}; "
            f"stack dump in {stack_file}"
        )
        self._say(f"[bold yellow]hang[/]: {outcome.message}")
        if stack:
            self.progress.console.print(stack.rstrip(), markup=False, highlight=False)
        outcome.ended_unix = time.time()
        return outcome


def outcome_dicts(attempts: list[AttemptOutcome]) -> list[dict[str, Any]]:
    return [asdict(a) for a in attempts]
