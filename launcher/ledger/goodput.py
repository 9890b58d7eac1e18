"""Where a job's allocated wall time went: pure arithmetic over ledger rows, no I/O.

Use::

    from gosok.launcher.ledger.goodput import breakdown, device_hours

    b = breakdown(ledger.job(job_id), ledger.attempts(job_id), ledger.events(job_id))
    b.goodput, b.parts()            # 0.87, {"startup": 312.0, "productive": ..., ...}
    device_hours(job, b.wall_s)     # (256.0, "GPU-hours")

Definition followed. ``goodput`` is Meta's *effective training time ratio* (ETTR):
productive runtime divided by the wall time of the job run, where productive runtime
leaves out work redone from the last checkpoint after an interruption and the
re-initialisation after a restart. Llama 3 reports it as "effective training time" (The
Llama 3 Herd of Models, 2024, section 3.3.4); Kokolis et al., "Revisiting Reliability in
Large-Scale Machine Learning Research Clusters" (Meta, HPCA 2025, arXiv:2410.21680) define
and model it. Meta's wall time also counts time queued; here it starts when the command
starts (``started_unix``, the allocation) and ends at ``finished_unix``.

Google's *ML Productivity Goodput* ("Machine Learning Fleet Efficiency: Analyzing and
Optimizing Large-Scale Google TPU Systems with ML Productivity Goodput", arXiv:2502.06982)
is a product of three factors: scheduling goodput (the share of time the resources a job
asked for were available to it), runtime goodput (the share of that time spent on
productive steps whose result was kept) and program goodput (how much of the hardware's
peak the steps used, an MFU). What is computed here is runtime goodput: the ledger starts
the clock at allocation, so scheduling goodput is 1 by construction (idle cluster time is
reported separately as idle spans), and program goodput is the job's ``mfu`` when it
records one, shown beside goodput and not multiplied in.

The wall time is cut into six parts that add up to it:

- ``startup``: command start to the first step of the first attempt;
- ``restart_downtime``: for each restart, from the failed attempt's last progress (its
  ``last_step_unix``, so the time taken to detect a hang counts; else its end) to the next
  attempt's first step;
- ``lost_work``: steps redone after a restart. For a failed attempt followed by one that
  resumed from step ``r``: the attempt's mean step time x (``last_step`` - ``r``), where the
  mean step time is its stepping time (first to last step, less checkpoints) over the
  steps it made. A final failed attempt with no restart loses nothing here;
- ``checkpoint``: the seconds of ``"checkpoint"`` events. An event's ``unix`` is when the
  save finished; its seconds are taken out of the part its midpoint falls in, capped at
  what is left of that span;
- ``idle_tail``: last progress of the last attempt to ``finished_unix``;
- ``productive``: the rest, wall - the others.

``productive`` absorbs floating-point rounding so that ``math.fsum(parts) == wall``. If the
others add to more than the wall (inconsistent timestamps), ``productive`` is clipped at 0,
the others are scaled down by the same factor to fit, the largest of them absorbs the
rounding, and ``Breakdown.scaled`` is true.

A job without attempt rows counts as one attempt spanning the job, stepping from its own
``first_step_unix``. Without that, a ``"bench"`` job is productive throughout (a benchmark
has no steps; its measurement is its product) and a ``"launch"`` job is startup throughout
(it never reached a step). Device-hours are ``gpus x wall / 3600``, called
CPU-hours where ``gpu_type`` is ``"cpu"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PARTS = ("startup", "productive", "checkpoint", "lost_work", "restart_downtime", "idle_tail")


@dataclass(frozen=True)
class Breakdown:
    """The parts of a job's wall time in seconds; ``parts()`` sums to ``wall_s``."""

    wall_s: float
    startup: float
    productive: float
    checkpoint: float
    lost_work: float
    restart_downtime: float
    idle_tail: float
    attempts: int
    scaled: bool = False
    running: bool = False

    @property
    def goodput(self) -> float:
        """ETTR: productive / wall (0 for a zero-length job)."""
        return self.productive / self.wall_s if self.wall_s > 0 else 0.0

    def parts(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PARTS}


@dataclass
class _Span:
    part: str
    start: float
    end: float
    checkpoint: float = 0.0

    @property
    def free(self) -> float:
        return self.end - self.start - self.checkpoint


def _num(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def breakdown(
    job: Mapping[str, Any],
    attempts: Sequence[Mapping[str, Any]] = (),
    events: Iterable[Mapping[str, Any]] = (),
    now_unix: float | None = None,
) -> Breakdown:
    """Split ``job``'s wall time (see the module docstring). An unfinished job is measured
    up to ``now_unix`` (default: now) and has ``running=True``."""
    start = float(job["started_unix"])
    finished = _num(job, "finished_unix")
    running = finished is None
    end = finished if finished is not None else (time.time() if now_unix is None else now_unix)
    end = max(end, start)
    wall = end - start

    ordered = sorted(attempts, key=lambda a: int(a.get("attempt") or 0))
    if not ordered:
        first_step = _num(job, "first_step_unix")
        if first_step is None and job.get("kind") == "bench":
            first_step = start
        ordered = [
            {
                "attempt": 0,
                "started_unix": start,
                "first_step_unix": first_step,
                "ended_unix": end,
                "last_step": job.get("steps"),
            }
        ]

    def clamp(t: float | None, default: float) -> float:
        return min(max(default if t is None else t, cursor), end)

    spans: list[_Span] = []
    stepping: list[tuple[int, _Span]] = []
    cursor = start
    for i, attempt in enumerate(ordered):
        gap_part = "startup" if i == 0 else "restart_downtime"
        ended = _num(attempt, "ended_unix")
        if ended is None and i + 1 < len(ordered):
            ended = _num(ordered[i + 1], "started_unix")
        first_step = _num(attempt, "first_step_unix")
        if first_step is None:
            until = clamp(ended, end)
            spans.append(_Span(gap_part, cursor, until))
            cursor = until
            continue
        first_step = clamp(first_step, end)
        spans.append(_Span(gap_part, cursor, first_step))
        cursor = first_step
        last_progress = _num(attempt, "last_step_unix")
        last_progress = clamp(ended if last_progress is None else last_progress, end)
        span = _Span("stepping", cursor, last_progress)
        spans.append(span)
        stepping.append((i, span))
        cursor = last_progress
    spans.append(_Span("idle_tail", cursor, end))

    checkpoint = 0.0
    for event in events:
        seconds = _num(event, "seconds") or 0.0
        if event.get("kind") != "checkpoint" or seconds <= 0:
            continue
        middle = (_num(event, "unix") or end) - seconds / 2
        span = next((s for s in spans if s.start <= middle < s.end), spans[-1])
        if middle < start:
            span = spans[0]
        taken = min(seconds, max(span.free, 0.0))
        span.checkpoint += taken
        checkpoint += taken

    lost = 0.0
    for i, span in stepping:
        if i + 1 >= len(ordered):
            continue
        attempt, resumed = ordered[i], ordered[i + 1]
        last_step = attempt.get("last_step")
        if last_step is None:
            continue
        from_step = int(attempt.get("resumed_from_step") or 0)
        kept_step = int(resumed.get("resumed_from_step") or 0)
        made = int(last_step) - from_step
        redone = int(last_step) - max(kept_step, from_step)
        if made <= 0 or redone <= 0:
            continue
        step_time = max(span.free, 0.0) / made
        lost += min(step_time * redone, max(span.free, 0.0))

    def total(part: str) -> float:
        return math.fsum(s.end - s.start - s.checkpoint for s in spans if s.part == part)

    others = {
        "startup": total("startup"),
        "checkpoint": checkpoint,
        "lost_work": lost,
        "restart_downtime": total("restart_downtime"),
        "idle_tail": total("idle_tail"),
    }
    others = {k: max(v, 0.0) for k, v in others.items()}
    productive = wall - math.fsum(others.values())
    scaled = False
    if productive < 0:
        factor = wall / math.fsum(others.values())
        others = {k: v * factor for k, v in others.items()}
        productive = 0.0
        scaled = True
        largest = max(others, key=lambda k: others[k])
        others[largest] += wall - math.fsum(others.values())
    else:
        productive += wall - math.fsum([productive, *others.values()])
    return Breakdown(
        wall_s=wall,
        productive=productive,
        attempts=len(attempts),
        scaled=scaled,
        running=running,
        **others,
    )


def device_hours(job: Mapping[str, Any], wall_s: float) -> tuple[float, str]:
    """``(gpus x wall / 3600, "GPU-hours")``, or ``"CPU-hours"`` for ``gpu_type == "cpu"``."""
    unit = "CPU-hours" if str(job.get("gpu_type") or "").lower() == "cpu" else "GPU-hours"
    return int(job.get("gpus") or 0) * wall_s / 3600.0, unit


def programme(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Totals per (project, cluster, unit) over per-job rows that carry ``project``,
    ``cluster``, ``gpus``, ``unit``, ``device_hours`` and every part of ``PARTS`` in
    seconds. ``goodput`` is device-weighted: sum(gpus x productive) / sum(gpus x wall)."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (str(row["project"]), str(row["cluster"]), str(row["unit"]))
        group = groups.setdefault(
            key,
            {"project": key[0], "cluster": key[1], "unit": key[2], "jobs": 0, "device_hours": 0.0}
            | {f"{p}_hours": 0.0 for p in PARTS},
        )
        gpus = int(row.get("gpus") or 0)
        group["jobs"] += 1
        group["device_hours"] += float(row["device_hours"])
        for part in PARTS:
            group[f"{part}_hours"] += gpus * float(row[part]) / 3600.0
    for group in groups.values():
        group["goodput"] = (
            group["productive_hours"] / group["device_hours"] if group["device_hours"] else 0.0
        )
    return [groups[k] for k in sorted(groups)]
