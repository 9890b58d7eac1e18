"""Where the programme's allocated GPU-hours went: pure arithmetic over allocations, job
rows (``report.job_rows``: each job's breakdown) and idle spans; no I/O.

Use::

    view = programme_view(ledger.allocations(), job_rows(ledger), ledger.idle_spans(),
                          now_unix=time.time(), stretch_s=3600)
    view["groups"]      # per provider, cluster, GPU type, project; largest gap first
    view["stretches"]   # allocated, nothing running, at least stretch_s long

For one allocation (``gpus`` G from ``start_unix`` to ``end_unix``, counted up to now), with
the jobs of its project on its cluster:

- ``allocated``: G x its elapsed time;
- ``used``: at each moment the GPUs of its running jobs, at most G, over time (a job runs
  from its start to its end, or to now while it runs);
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
which an allocation ran nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATES = ("allocated", "used", "productive", "idle")
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


def allocation_usage(
    allocation: Mapping[str, Any],
    jobs: Iterable[Mapping[str, Any]],
    spans: Iterable[Mapping[str, Any]],
    now_unix: float,
) -> dict[str, Any]:
    """One allocation's GPU-seconds by state, and its fully idle segments."""
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
    productive = 0.0
    for job in mine:
        a, b = _job_interval(job)
        if b > a:
            share = _clip(t0, t1, a, b) / (b - a)
            productive += int(job.get("gpus") or 0) * float(job.get("productive") or 0.0) * share
    productive = min(productive, used)
    busy = [(a, b) for a, b, n in segments if n > 0]
    low = sum(
        _clip(a, b, float(s["start_unix"]), float(s["end_unix"]))
        for s in spans
        if s["cluster"] == allocation["cluster"]
        for a, b in busy
    )
    low = min(low, used - productive)
    return {
        "allocated": allocated,
        "used": used,
        "productive": productive,
        "low_util": low,
        "idle": allocated - used + low,
        "overhead": used - productive - low,
        "empty": [(a, b) for a, b, n in segments if n == 0],
    }


def programme_view(
    allocations: Iterable[Mapping[str, Any]],
    jobs: Iterable[Mapping[str, Any]],
    spans: Iterable[Mapping[str, Any]],
    now_unix: float | None = None,
    stretch_s: float = DEFAULT_STRETCH_S,
) -> dict[str, list[dict[str, Any]]]:
    """Groups (hours by state, ``gap``, ``use``/``goodput`` shares), largest gap first, and
    the idle stretches, longest first."""
    now = time.time() if now_unix is None else now_unix
    jobs, spans = list(jobs), list(spans)
    groups: dict[tuple, dict[str, Any]] = {}
    stretches = []
    for alloc in allocations:
        usage = allocation_usage(alloc, jobs, spans, now)
        key = tuple(str(alloc.get(k) or "") for k in GROUP_KEYS)
        group = groups.setdefault(
            key,
            dict(zip(GROUP_KEYS, key, strict=True))
            | {"allocations": 0, "gpus_now": 0}
            | {f"{s}_hours": 0.0 for s in (*STATES, "overhead", "low_util")},
        )
        group["allocations"] += 1
        if float(alloc["start_unix"]) <= now < float(alloc["end_unix"]):
            group["gpus_now"] += int(alloc["gpus"])
        for state in (*STATES, "overhead", "low_util"):
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
