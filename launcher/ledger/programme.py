"""Where the programme's allocated GPU-hours went: pure arithmetic over allocations, job
rows (``report.job_rows``: each job's breakdown), idle spans and the busy intervals of
node watchers (``gosok ledger watch``); no I/O.

Use::

    view = programme_view(ledger.allocations(), job_rows(ledger), ledger.idle_spans(),
                          now_unix=time.time(), stretch_s=3600,
                          watched=busy_intervals(watcher_samples, idle_below))
    view["groups"]      # per provider, cluster, GPU type, project; largest gap first
    view["stretches"]   # allocated, nothing running, at least stretch_s long

Each cluster is swept over time, cut wherever an allocation or a job on it starts or ends.
In each piece, every allocation (granted G GPUs, counted up to now) gets, in the order the
allocations began:

- the GPUs of running jobs of its project (and GPU type) on its cluster, at most G; a
  job's GPUs go to the first allocation with room, so a job is counted once even where a
  project holds two grants. A job running for a project without an allocation there is
  counted against none;
- ``productive``: of those GPUs, the share of the job's wall time its goodput breakdown
  found productive;
- ``outside``: devices the node watchers saw busy (utilisation at or above the idle rule)
  beyond every gosok job on the cluster, shared among the allocations by their GPUs left
  free: work run without gosok counts as used, not as productive (nothing reports its
  progress). Watchers' GPU rows count, or their CPU rows where the GPU type is ``cpu``;
- ``low_util``: device-time of idle spans (utilisation below the idle rule) on the cluster,
  shared among allocations by the job GPUs they hold, at most their used-not-productive
  time.

Then ``used`` = job GPUs + ``outside``; ``idle`` = allocated - used + ``low_util``;
``overhead`` = used - productive - ``low_util`` (start-up, checkpoints, restarts, redone
work), so ``productive + overhead + idle == allocated`` (GPU-seconds; hours in the view,
CPU-hours where the GPU type is ``cpu``). ``gap`` (allocated - productive) ranks the groups;
``stretches`` lists each span of at least ``stretch_s`` in which an allocation held no job
and no watched device on its cluster was busy. Each group keeps its allocations'
``timelines``: ``(start, end, GPUs used)`` pieces, for plots.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATES = ("allocated", "used", "productive", "idle")
PARTS = (*STATES, "overhead", "low_util", "outside")
GROUP_KEYS = ("provider", "cluster", "gpu_type", "project")
DEFAULT_STRETCH_S = 3600.0

Interval = tuple[float, float]


def _clip(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


class _Intervals:
    """Intervals to overlap with pieces of time, found by bisection."""

    def __init__(self, intervals: Iterable[Interval]) -> None:
        self.items = sorted((a, b) for a, b in intervals if b > a)
        self.starts = [a for a, _ in self.items]
        self.longest = max((b - a for a, b in self.items), default=0.0)

    def within(self, a: float, b: float) -> list[Interval]:
        lo = bisect.bisect_left(self.starts, a - self.longest)
        hi = bisect.bisect_left(self.starts, b)
        return [(s, e) for s, e in self.items[lo:hi] if e > a]

    def seconds(self, a: float, b: float) -> float:
        return sum(_clip(a, b, s, e) for s, e in self.within(a, b))

    def quiet(self, a: float, b: float) -> list[Interval]:
        """The parts of [a, b) no interval covers."""
        pieces, at = [], a
        for start, end in sorted((max(s, a), min(e, b)) for s, e in self.within(a, b)):
            if start > at:
                pieces.append((at, start))
            at = max(at, end)
        if at < b:
            pieces.append((at, b))
        return pieces


def _gpu_match(job: Mapping[str, Any], allocation: Mapping[str, Any]) -> bool:
    kind = str(job.get("gpu_type") or "").lower()
    return job["project"] == allocation["project"] and kind in (
        "",
        str(allocation["gpu_type"]).lower(),
    )


def _sweep_cluster(
    allocations: Sequence[Mapping[str, Any]],
    jobs: Sequence[Mapping[str, Any]],
    spans: _Intervals,
    watched: dict[bool, _Intervals],
    now: float,
) -> list[dict[str, Any]]:
    """Usage (GPU-seconds by part, and the quiet pieces) of each allocation of one cluster."""
    windows = [
        (float(a["start_unix"]), max(float(a["start_unix"]), min(float(a["end_unix"]), now)))
        for a in allocations
    ]
    runs = [
        (float(j["started_unix"]), float(j["started_unix"]) + float(j.get("wall_s") or 0.0))
        for j in jobs
    ]
    shares = [
        min(max(float(j.get("productive") or 0.0) / (b - a), 0.0), 1.0) if b > a else 0.0
        for j, (a, b) in zip(jobs, runs, strict=True)
    ]
    cuts = sorted({t for w in windows for t in w} | {t for r in runs for t in r})
    usage = [dict.fromkeys(PARTS, 0.0) | {"quiet": [], "timeline": []} for _ in allocations]
    for a, b in zip(cuts, cuts[1:], strict=False):
        if b <= a:
            continue
        mid, dt = (a + b) / 2, b - a
        active = [k for k, (s, e) in enumerate(windows) if s <= mid < e]
        if not active:
            continue
        running = [i for i, (s, e) in enumerate(runs) if s <= mid < e]
        left = {i: int(jobs[i].get("gpus") or 0) for i in running}
        every_job = sum(left.values())
        held, made = {}, {}
        for k in active:
            room, productive = int(allocations[k]["gpus"]), 0.0
            for i in running:
                if room and left[i] and _gpu_match(jobs[i], allocations[k]):
                    take = min(room, left[i])
                    room, left[i] = room - take, left[i] - take
                    productive += take * shares[i]
            held[k], made[k] = int(allocations[k]["gpus"]) - room, productive
        free = {k: int(allocations[k]["gpus"]) - held[k] for k in active}
        for cpu in {str(allocations[k]["gpu_type"]).lower() == "cpu" for k in active}:
            mine = [k for k in active if (str(allocations[k]["gpu_type"]).lower() == "cpu") == cpu]
            beyond = max(watched[cpu].seconds(a, b) - every_job * dt, 0.0)
            room = sum(free[k] for k in mine)
            for k in mine:
                outside = min(beyond * free[k] / room, free[k] * dt) if room else 0.0
                usage[k]["outside"] += outside
                usage[k]["timeline"].append((a, b, held[k] + outside / dt))
                if held[k] == 0:
                    quiet = watched[cpu].quiet(a, b) if beyond > 0 else [(a, b)]
                    usage[k]["quiet"] += quiet
        low = spans.seconds(a, b)
        holding = max(every_job, sum(held.values()))  # jobs without an allocation share too
        for k in active:
            gpus = int(allocations[k]["gpus"])
            share = low * held[k] / holding if holding else 0.0
            usage[k]["allocated"] += gpus * dt
            usage[k]["used"] += held[k] * dt
            usage[k]["productive"] += made[k] * dt
            usage[k]["low_util"] += min(share, (held[k] - made[k]) * dt)
    for part in usage:
        part["used"] += part["outside"]
        part["idle"] = part["allocated"] - part["used"] + part["low_util"]
        part["overhead"] = part["used"] - part["productive"] - part["low_util"]
        part["quiet"] = _joined(part["quiet"])
    return usage


def _joined(pieces: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(pieces):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


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
    allocations = sorted(
        allocations, key=lambda a: (float(a["start_unix"]), str(a.get("allocation_id", "")))
    )
    jobs = sorted(jobs, key=lambda j: (float(j["started_unix"]), str(j.get("job_id", ""))))
    spans, watched = list(spans), list(watched)
    groups: dict[tuple, dict[str, Any]] = {}
    stretches = []
    for cluster in sorted({str(a["cluster"]) for a in allocations}):
        mine = [a for a in allocations if a["cluster"] == cluster]
        seen = {
            cpu: _Intervals(
                (s, e) for c, _, d, s, e in watched if c == cluster and (d == "cpu") == cpu
            )
            for cpu in (False, True)
        }
        idle = _Intervals(
            (float(s["start_unix"]), float(s["end_unix"])) for s in spans if s["cluster"] == cluster
        )
        usages = _sweep_cluster(mine, [j for j in jobs if j["cluster"] == cluster], idle, seen, now)
        for alloc, usage in zip(mine, usages, strict=True):
            key = tuple(str(alloc.get(k) or "") for k in GROUP_KEYS)
            group = groups.setdefault(
                key,
                dict(zip(GROUP_KEYS, key, strict=True))
                | {"allocations": 0, "gpus_now": 0, "timelines": []}
                | {f"{s}_hours": 0.0 for s in PARTS},
            )
            group["allocations"] += 1
            group["timelines"].append(
                {"gpus": int(alloc["gpus"]), "start_unix": float(alloc["start_unix"]),
                 "pieces": usage["timeline"], "quiet": usage["quiet"]}
            )  # fmt: skip
            if float(alloc["start_unix"]) <= now < float(alloc["end_unix"]):
                group["gpus_now"] += int(alloc["gpus"])
            for part in PARTS:
                group[f"{part}_hours"] += usage[part] / 3600.0
            for a, b in usage["quiet"]:
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
