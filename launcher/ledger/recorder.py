"""Recording ``gosok launch`` and ``gosok bench`` runs in the goodput ledger.

Use (``gosok launch``)::

    recorder = LaunchRecorder.for_launch(cfg, plan, say=print)    # job row written
    with recorder, ray_cluster(cfg.cluster):                      # an error finishes the job
        result = Supervisor(..., observer=recorder).run()         # attempts, events, samples
    recorder.finish(result.ok, result.message, metrics)           # steps, tokens, MFU, status

and for ``gosok bench``: ``record_bench(cfg.ledger, cfg, started, finished, exit_code)``.

The supervisor calls ``on_attempt_start(attempt, started_unix)`` when it starts placing an
attempt's ranks, ``on_poll(attempt, group, view)`` after each poll of the ranks, and
``on_attempt_end(outcome)`` when the attempt is over. From those the recorder takes:

- each attempt's start, end, cause (the outcome's kind: ``ok``, ``node_lost``, ``hang``,
  ...) and last step (the outcome's, else rank 0's heartbeat);
- from rank 0's heartbeat: the step and its time (last progress), and, when the rank sends
  them (the recipe does; a script may pass the same keywords to ``beat``),
  ``first_step_unix``, ``resumed_from_step`` and the running checkpoint totals
  ``checkpoints`` / ``checkpoint_s`` / ``checkpoint_unix`` / ``checkpoint_step``, from
  which each save becomes a ``checkpoint`` event. Without ``first_step_unix``, the first
  heartbeat seen stands in;
- utilisation samples: local rank 0's actor on each node (for ``gosok launch``, the
  node's agent) runs a ``UtilSampler`` while the ranks run, measuring the node's GPUs and the
  CPU share of the job's rank processes there (their pids come with the polls); the
  recorder drains it every ``sample_interval_s`` (at least every second) without waiting,
  and once more with ``stop`` when the ranks end. Idle spans (``idle_below``,
  ``idle_for_s``) are found as samples arrive, over the GPUs of a node that has them, else
  its CPU row; samples older than seven days are folded into aggregates when the job ends.

Every ledger write runs in order on one background thread, so a slow or locked ledger
never holds up the supervisor; a failing ledger prints one line and the job goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gosok.launcher.config.secrets import current

from .sampler import SPAN_FIELDS, IdleTracker
from .writer import WRITE_TIMEOUT_S, LedgerWriter, print_stderr

SAMPLE_RETENTION_S = 7 * 24 * 3600.0
MIN_DRAIN_EVERY_S = 1.0
COLLECT_TIMEOUT_S = 3.0


def node_labels(rank_info: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Rank -> node label for each node's local rank 0: the host name, or host/node-id
    prefix where host names repeat (the local cluster's nodes share one host)."""
    leaders = [info for info in rank_info if info.get("local_rank") == 0]
    hosts = [str(info.get("hostname") or "") for info in leaders]
    distinct = all(hosts) and len(set(hosts)) == len(hosts)
    return {
        int(info["rank"]): host if distinct else f"{host or 'node'}/{str(info['node_id'])[:8]}"
        for info, host in zip(leaders, hosts, strict=True)
    }


@dataclass
class _Attempt:
    number: int
    started_unix: float
    first_step_unix: float | None = None
    resumed_from: int | None = None
    last_step: int | None = None
    last_step_unix: float | None = None
    saves: int = 0
    checkpoint_s: float = 0.0
    leaders: dict[str, int] = field(default_factory=dict)  # node label -> its sampling rank
    node_ids: dict[str, str] = field(default_factory=dict)  # node label -> Ray node id
    sampling: bool = False
    stopped: bool = False
    last_drain: float = 0.0
    pending: dict[Any, str] = field(default_factory=dict)  # drain ref -> node label


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


class LaunchRecorder:
    """The supervisor's observer for one ``gosok launch`` job (see the module docstring).
    Every public method swallows its own errors: recording never fails the job."""

    def __init__(
        self,
        settings: Any,
        *,
        base_job_id: str,
        cluster: Any,
        detail: Mapping[str, Any] | None = None,
        tokens_per_step: int | None = None,
        say: Callable[[str], None] = print_stderr,
        started_unix: float | None = None,
    ) -> None:
        self.enabled = bool(settings.enabled)
        self.base_job_id = base_job_id
        self._job: str | None = None
        self.cluster_name = str(cluster.name)
        self.interval_s = float(settings.sample_interval_s)
        self.tokens_per_step = tokens_per_step
        self.started_unix = time.time() if started_unix is None else started_unix
        self.finished = False
        self._say = say
        self._attempt: _Attempt | None = None
        self._last: _Attempt | None = None
        self._idle = IdleTracker(float(settings.idle_below), float(settings.idle_for_s))
        self._gpu_nodes: set[Any] = set()
        self._writer: LedgerWriter | None = None
        if not self.enabled:
            return
        self._writer = LedgerWriter(settings.path, say, prune_older_than_s=SAMPLE_RETENTION_S)
        header = {
            "kind": "launch",
            "project": str(settings.project),
            "cluster": self.cluster_name,
            "gpu_type": str(cluster.gpu),
            "nodes": int(cluster.nodes),
            "gpus": int(cluster.nodes) * int(cluster.gpus_per_node),
            "started_unix": self.started_unix,
            "detail": dict(detail or {}),
        }
        self._job = self._writer.op("start_job", job_id=base_job_id, **header)

    @property
    def job_id(self) -> str:
        """The id the ledger gave the job (``base_job_id``, or ``-2`` ... when taken)."""
        found = self._writer.result(self._job) if self._writer and self._job else None
        return found or self.base_job_id

    @classmethod
    def for_launch(
        cls, cfg: Any, plan: Any, say: Callable[[str], None] = print_stderr
    ) -> LaunchRecorder:
        """The recorder of a ``gosok launch`` run: ``cfg`` its composed config, ``plan``
        its ``LaunchPlan`` (run id, job id, run directory, batch arithmetic)."""
        job = cfg.job
        detail = {
            "run_id": plan.run_id,
            "job_id": plan.job_id,
            "run_dir": str(plan.run_dir),
            "job": str(job.name),
            "mode": str(job.kind),
        }
        if job.kind == "recipe":
            detail.update(strategy=str(job.strategy), precision=str(job.precision))
        batch = plan.batch or {}
        return cls(
            cfg.ledger,
            base_job_id=plan.run_id,
            cluster=cfg.cluster,
            detail=detail,
            tokens_per_step=batch.get("tokens_per_step"),
            say=say,
        )

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        if not self.enabled or self._writer is None or self.finished:
            return
        try:
            fn()
        except Exception as err:
            self._writer.say_once(
                "failed",
                f"ledger: {what} failed ({type(err).__name__}: {err}); the job goes on "
                "without it, later ledger errors are not printed",
            )

    def _op(self, method: str, **kwargs: Any) -> None:
        """Queue one of this job's writes."""
        assert self._writer is not None
        self._writer.op(method, job=self._job, **kwargs)

    # ---- supervisor hooks --------------------------------------------------------------

    def on_attempt_start(self, attempt: int, started_unix: float) -> None:
        def run() -> None:
            self._attempt = _Attempt(attempt, started_unix)
            self._op("record_attempt", attempt=attempt, started_unix=started_unix)

        self._guard("recording an attempt's start", run)

    def on_poll(self, attempt: int, group: Any, view: Any) -> None:
        """``view``: ``supervisor.PollView`` (rank 0's beat, pids by rank, ending)."""

        def run() -> None:
            state = self._attempt
            if state is None or state.number != attempt:
                state = self._attempt = _Attempt(attempt, time.time())
            if view.beat0:
                self._beat(state, view.beat0)
            if group is not None:
                self._sample(state, group, view)

        self._guard("reading a heartbeat", run)

    def on_attempt_end(self, outcome: Any) -> None:
        def run() -> None:
            state = self._attempt
            if state is None or state.number != outcome.attempt:
                state = _Attempt(outcome.attempt, outcome.started_unix or time.time())
            lost = set(outcome.failed_node_ids)  # their samples went with them: no waiting
            state.pending = {
                ref: label
                for ref, label in state.pending.items()
                if state.node_ids.get(label) not in lost
            }
            self._collect(state, wait_s=COLLECT_TIMEOUT_S)
            last_step = outcome.last_step if outcome.last_step is not None else state.last_step
            first = state.first_step_unix or outcome.first_beat_unix
            values = {
                "started_unix": outcome.started_unix or state.started_unix,
                "first_step_unix": first,
                "ended_unix": outcome.ended_unix or time.time(),
                "cause": "ok" if outcome.ok else (outcome.kind or "unknown"),
                "last_step": _int(last_step),
                "last_step_unix": state.last_step_unix,
                "resumed_from_step": state.resumed_from,
            }
            self._op("record_attempt", attempt=outcome.attempt, **values)
            state.last_step = _int(last_step)
            self._last, self._attempt = state, None

        self._guard("recording an attempt's end", run)

    # ---- the job's end -----------------------------------------------------------------

    def __enter__(self) -> LaunchRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb) -> None:
        if err is not None:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "error"
            self.finish(False, f"{type(err).__name__}: {err}", None, exit_status=status)

    def finish(
        self,
        ok: bool,
        message: str = "",
        metrics: Mapping[str, Any] | None = None,
        exit_status: str | None = None,
    ) -> None:
        """Close the job (``ok``/``failed``, or ``exit_status``), fold old samples, and
        wait for the queued writes; a second call does nothing."""

        def run() -> None:
            metrics_ = dict(metrics or {})
            steps = metrics_.get("final_step")
            if steps is None and self._last is not None:
                steps = self._last.last_step
            steps = _int(steps)
            tokens = None
            if steps is not None and self.tokens_per_step:
                tokens = float(steps) * float(self.tokens_per_step)
            status = exit_status or ("ok" if ok else "failed")
            finished = time.time()
            detail = {"message": current().text(message)} if message else {}
            state = self._attempt
            if state is not None:  # the job ended inside an attempt (an error, Ctrl-C)
                values = {
                    "ended_unix": finished,
                    "cause": status,
                    "last_step": state.last_step,
                    "last_step_unix": state.last_step_unix,
                }
                self._op("record_attempt", attempt=state.number, **values)
            self._write_spans(self._idle.feed([], final=True))
            self._op(
                "finish_job",
                exit_status=status,
                finished_unix=finished,
                steps=steps,
                tokens=tokens,
                mfu=metrics_.get("mfu"),
                detail=detail,
            )

        self._guard("closing the job", run)
        if self._writer is not None and not self.finished:
            self.finished = True
            self._writer.close()

    # ---- heartbeats and samples --------------------------------------------------------

    def _beat(self, state: _Attempt, beat: Mapping[str, Any]) -> None:
        step, unix = int(beat["step"]), float(beat["unix"])
        number = state.number
        if state.first_step_unix is None:
            state.first_step_unix = float(beat.get("first_step_unix") or unix)
            state.resumed_from = _int(beat.get("resumed_from_step"))
            self._op(
                "record_attempt",
                attempt=number,
                first_step_unix=state.first_step_unix,
                resumed_from_step=state.resumed_from,
            )
        state.last_step, state.last_step_unix = step, unix
        saves = int(beat.get("checkpoints") or 0)
        log = beat.get("checkpoint_log")
        if saves > state.saves and isinstance(log, list) and len(log) >= saves - state.saves:
            # One event per save, even when several happened between two polls.
            for saved_at, when, seconds in log[len(log) - (saves - state.saves) :]:
                detail = {"attempt": number, "step": int(saved_at), "saves": 1}
                self._checkpoint(float(seconds), float(when), detail)
            state.saves = saves
            state.checkpoint_s = float(beat.get("checkpoint_s") or 0.0)
        elif saves > state.saves:
            total = float(beat.get("checkpoint_s") or 0.0)
            seconds = max(total - state.checkpoint_s, 0.0)
            when = float(beat.get("checkpoint_unix") or unix)
            saved_at = int(beat.get("checkpoint_step") or step)
            detail = {"attempt": number, "step": saved_at, "saves": saves - state.saves}
            state.saves, state.checkpoint_s = saves, total
            self._checkpoint(seconds, when, detail)

    def _checkpoint(self, seconds: float, unix: float, detail: dict[str, Any]) -> None:
        self._op("record_event", kind="checkpoint", seconds=seconds, unix=unix, detail=detail)

    def _sample(self, state: _Attempt, group: Any, view: Any) -> None:
        now = time.monotonic()
        if not state.sampling:
            state.sampling = True
            infos = list(getattr(group, "rank_info", None) or [])
            node_of = {int(info["rank"]): info.get("node_id") for info in infos}
            for rank, label in node_labels(infos).items():
                pids = [
                    int(pid)
                    for other, pid in view.pids.items()
                    if pid and node_of.get(other) == node_of[rank]
                ]
                group.start_sampler(rank, self.interval_s, label, self.cluster_name, "", pids)
                state.leaders[label] = rank
                state.node_ids[label] = str(node_of[rank])
            state.last_drain = now
        self._collect(state, wait_s=0.0)
        if state.stopped or not state.leaders:
            return
        ending = view.ending
        if not ending and now - state.last_drain < max(self.interval_s, MIN_DRAIN_EVERY_S):
            return
        waiting = set(state.pending.values())
        for label, rank in state.leaders.items():
            if ending or label not in waiting:
                state.pending[group.drain_samples(rank, stop=ending)] = label
        state.last_drain = now
        state.stopped = ending

    def _collect(self, state: _Attempt, wait_s: float) -> None:
        """Store the drains that have answered (waiting up to ``wait_s`` for the rest);
        a node that died takes its last undrained samples with it."""
        if not state.pending:
            return
        import ray

        refs = list(state.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        rows: list[dict[str, Any]] = []
        for ref in ready:
            state.pending.pop(ref, None)
            with contextlib.suppress(ray.exceptions.RayError):
                rows += ray.get(ref)
        if wait_s > 0:
            state.pending.clear()
        if rows:
            self._store(rows)

    def _store(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row.get("gpu_util_pct") is not None:
                self._gpu_nodes.add(row.get("node"))
        self._op("add_samples", rows=rows)  # their job_id is set as they are applied
        # A GPU job's host CPU idles by design: on GPU nodes only the GPUs can be idle.
        watched = [r for r in rows if r.get("device") != "cpu" or r["node"] not in self._gpu_nodes]
        self._write_spans(self._idle.feed(watched))

    def _write_spans(self, spans: Iterable[Mapping[str, Any]]) -> None:
        assert self._writer is not None
        for span in spans:
            self._writer.op("add_idle_span", **{k: span[k] for k in SPAN_FIELDS})


# ---- gosok bench ------------------------------------------------------------------------


def _bench_name(cfg: Any) -> str:
    suite = cfg.get("suite") if hasattr(cfg, "get") else getattr(cfg, "suite", None)
    if suite:
        return f"suite-{getattr(suite, 'name', 'suite')}"
    return str(getattr(cfg.bench, "name", "bench"))


def record_bench(
    ledger_cfg: Any,
    cfg: Any,
    started_unix: float,
    finished_unix: float,
    exit_status: int | str,
    *,
    run_dir: Any = None,
    say: Callable[[str], None] = print_stderr,
    detail: Mapping[str, Any] | None = None,
) -> str | None:
    """Record one ``gosok bench`` run as a ``bench`` job (productive throughout: a
    benchmark's measurement is its product). ``exit_status``: the exit code (0 is
    ``ok``) or a word such as ``error``. Returns the job id, or None when disabled or
    the ledger failed (one line printed; never raises)."""
    if not ledger_cfg.enabled:
        return None
    try:
        name = _bench_name(cfg)
        where = str(run_dir) if run_dir is not None else f"{started_unix:.6f}"
        clean = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:40] or "bench"
        base = f"bench-{clean}-{hashlib.sha1(where.encode()).hexdigest()[:10]}"
        if isinstance(exit_status, int):
            status = "ok" if exit_status == 0 else f"exit {exit_status}"
        else:
            status = str(exit_status)
        cluster = cfg.cluster
        info = {"bench": name, **({"run_dir": str(run_dir)} if run_dir is not None else {})}
        writer = LedgerWriter(ledger_cfg.path, say)
        start = writer.op(
            "start_job",
            job_id=base,
            kind="bench",
            project=str(ledger_cfg.project),
            cluster=str(cluster.name),
            gpu_type=str(cluster.gpu),
            nodes=int(cluster.nodes),
            gpus=int(cluster.nodes) * int(cluster.gpus_per_node),
            started_unix=started_unix,
            detail={**info, **dict(detail or {})},
        )
        writer.op("finish_job", job=start, exit_status=status, finished_unix=finished_unix)
        writer.close(timeout_s=WRITE_TIMEOUT_S)
        return writer.result(start)
    except Exception as err:
        say(f"ledger: recording the run failed ({type(err).__name__}: {err}); results unaffected")
        return None
