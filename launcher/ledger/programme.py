"""Where the programme's allocated GPU-hours went: pure arithmetic over allocations, job
rows (``report.job_rows``: each job's breakdown), idle spans and the busy intervals of
node watchers (``gosok ledger watch``); no I/O.

Use::

    view = programme_view(ledger.allocations(), job_rows(ledger), ledger.idle_spans(),
                          now_unix=time.time(), stretch_s=3600,
                          watched=busy_intervals(watcher_samples, idle_below))
    view["groups"]      # per provider, cluster, GPU type, project; largest gap first
    view["stretches"]   # allocated, nothing running, at least stretch_s long

For one allocation (``gpus`` G from ``start_unix`` to ``end_unix``, counted up to now), with
the jobs of its project on its cluster:

- ``allocated``: G x its elapsed time;
- ``used``: at each moment the GPUs of its running jobs, at most G, over time (a job runs
  from its start to its end, or to now while it runs), plus ``outside``;
- ``outside``: devices the node watchers saw busy (utilisation at or above the idle rule)
  beyond those the gosok jobs hold, at most the GPUs no job holds: work run without gosok
  on the allocation's cluster still counts as used (not as productive: nothing reports
  its progress). Watchers' GPU rows count, or their CPU rows where the GPU type is ``cpu``;
- ``productive``: each job's productive time (its goodput breakdown) x its GPUs, over the
  part of the job inside the allocation, at most ``used``;
- ``low_util``: device-time of idle spans (utilisation below the idle rule, from the job's
  own samples or ``gosok ledger watch``) on the cluster while the allocation's jobs ran,
  at most ``used - productive``;
- ``idle``: allocated with nothing running (``allocated - used``) plus ``low_util``;
- ``overhead``: ``used - productive - low_util`` (start-up, checkpoints, restarts, redone
  work).

So ``productive + overhead + idle == allocated`` for every allocation and every group.
Hours are GPU-hours (CPU-hours where the GPU type is ``cpu``). ``gap`` (allocated -
productive) ranks the groups; ``stretches`` lists each span of at least ``stretch_s`` in
which an allocation ran no gosok job and no watched device of its cluster was busy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATES = ("allocated", "used", "productive", "idle")
PARTS = (*STATES, "overhead", "low_util", "outside")
GROUP_KEYS = ("provider", "cluster", "gpu_type", "project")
DEFAULT_STRETCH_S = 3600.0


def _clip(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _job_interval(job: Mapping[str, Any]) -> tuple[float, float]:
    start = float(job["started_unix"])
    return start, start + float(job.get("wall_s") or 0.0)


def _running(
    jobs: Sequence[Mapping[str, Any]], gpus: int, t0: float, t1: float
) -> list[tuple[float, float, int]]:
    """Segments ``(start, end, running GPUs capped at gpus)`` covering ``[t0, t1]``."""
    cuts = {t0, t1}
    for job in jobs:
        a, b = _job_interval(job)
        cuts |= {min(max(a, t0), t1), min(max(b, t0), t1)}
    points = sorted(cuts)
    segments = []
    for a, b in zip(points, points[1:], strict=False):
        if b <= a:
            continue
        mid = (a + b) / 2
        busy = sum(
            int(j.get("gpus") or 0)
            for j in jobs
            if _job_interval(j)[0] <= mid < _job_interval(j)[1]
        )
        segments.append((a, b, min(gpus, busy)))
    return segments


def _watched(
    watched: Iterable[tuple[str, str, str, float, float]], allocation: Mapping[str, Any]
) -> list[tuple[float, float]]:
    """The watchers' busy intervals that count for the allocation (its cluster; GPU rows,
    or CPU rows where its GPU type is ``cpu``)."""
    cpu = str(allocation["gpu_type"]).lower() == "cpu"
    return [
        (start, end)
        for cluster, _node, device, start, end in watched
        if cluster == allocation["cluster"] and (device == "cpu") == cpu
    ]


def _quiet(a: float, b: float, busy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of [a, b) no busy interval covers."""
    pieces, at = [], a
    for start, end in sorted((max(s, a), min(e, b)) for s, e in busy if e > a and s < b):
        if start > at:
            pieces.append((at, start))
        at = max(at, end)
    if at < b:
        pieces.append((at, b))
    return pieces


def _watched_s(busy: Iterable[tuple[float, float]], a: float, b: float) -> float:
    """Device-seconds busy within [a, b)."""
    return sum(_clip(a, b, start, end) for start, end in busy)


def allocation_usage(
    allocation: Mapping[str, Any],
    jobs: Iterable[Mapping[str, Any]],
    spans: Iterable[Mapping[str, Any]],
    now_unix: float,
    watched: Iterable[tuple[str, str, str, float, float]] = (),
) -> dict[str, Any]:
    """One allocation's GPU-seconds by state, and its idle segments (no job, quiet)."""
    gpus = int(allocation["gpus"])
    t0 = float(allocation["start_unix"])
    t1 = max(t0, min(float(allocation["end_unix"]), now_unix))
    mine = [
        j
        for j in jobs
        if j["cluster"] == allocation["cluster"]
        and j["project"] == allocation["project"]
        and _clip(t0, t1, *_job_interval(j)) > 0
    ]
    segments = _running(mine, gpus, t0, t1)
    allocated = gpus * (t1 - t0)
    used = sum((b - a) * n for a, b, n in segments)
    busy = _watched(watched, allocation)
    outside = sum(
        min(max(_watched_s(busy, a, b) - n * (b - a), 0.0), (gpus - n) * (b - a))
        for a, b, n in segments
    )
    productive = 0.0
    for job in mine:
        a, b = _job_interval(job)
        if b > a:
            share = _clip(t0, t1, a, b) / (b - a)
            productive += int(job.get("gpus") or 0) * float(job.get("productive") or 0.0) * share
    productive = min(productive, used)
    running = [(a, b) for a, b, n in segments if n > 0]
    low = sum(
        _clip(a, b, float(s["start_unix"]), float(s["end_unix"]))
        for s in spans
        if s["cluster"] == allocation["cluster"]
        for a, b in running
    )
    low = min(low, used - productive)
    return {
        "allocated": allocated,
        "used": used + outside,
        "outside": outside,
        "productive": productive,
        "low_util": low,
        "idle": allocated - used - outside + low,
        "overhead": used + outside - productive - low,
        "empty": [piece for a, b, n in segments if n == 0 for piece in _quiet(a, b, busy)],
    }


def programme_view(
    allocations: Iterable[Mapping[str, Any]],
    jobs: Iterable[Mapping[str, Any]],
    spans: Iterable[Mapping[str, Any]],
    now_unix: float | None = None,
    stretch_s: float = DEFAULT_STRETCH_S,
    watched: Iterable[tuple[str, str, str, float, float]] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Groups (hours by state, ``gap``, ``use``/``goodput`` shares), largest gap first, and
    the idle stretches, longest first."""
    now = time.time() if now_unix is None else now_unix
    jobs, spans, watched = list(jobs), list(spans), list(watched)
    groups: dict[tuple, dict[str, Any]] = {}
    stretches = []
    for alloc in allocations:
        usage = allocation_usage(alloc, jobs, spans, now, watched)
        key = tuple(str(alloc.get(k) or "") for k in GROUP_KEYS)
        group = groups.setdefault(
            key,
            dict(zip(GROUP_KEYS, key, strict=True))
            | {"allocations": 0, "gpus_now": 0}
            | {f"{s}_hours": 0.0 for s in PARTS},
        )
        group["allocations"] += 1
        if float(alloc["start_unix"]) <= now < float(alloc["end_unix"]):
            group["gpus_now"] += int(alloc["gpus"])
        for state in PARTS:
            group[f"{state}_hours"] += usage[state] / 3600.0
        for a, b in usage["empty"]:
            if b - a >= stretch_s:
                stretches.append(
                    dict(zip(GROUP_KEYS, key, strict=True))
                    | {
                        "allocation_id": alloc.get("allocation_id", ""),
                        "start_unix": a,
                        "end_unix": b,
                        "gpus": int(alloc["gpus"]),
                        "gpu_hours": int(alloc["gpus"]) * (b - a) / 3600.0,
                    }
                )
    rows = []
    for group in groups.values():
        allocated = group["allocated_hours"]
        group["gap_hours"] = allocated - group["productive_hours"]
        group["use"] = group["used_hours"] / allocated if allocated else 0.0
        group["goodput"] = group["productive_hours"] / allocated if allocated else 0.0
        group["unit"] = "CPU-hours" if group["gpu_type"].lower() == "cpu" else "GPU-hours"
        rows.append(group)
    rows.sort(key=lambda g: (-g["gap_hours"], *(g[k] for k in GROUP_KEYS)))
    stretches.sort(key=lambda s: (-(s["end_unix"] - s["start_unix"]), s["start_unix"]))
    return {"groups": rows, "stretches": stretches}
