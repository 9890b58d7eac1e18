"""What the driver concludes from its nodes' reports, one poll at a time (no Ray here: the
supervisor feeds it, and ``benchmarks/overhead/supervisor.py`` drives it with thousands of
simulated nodes).

Each poll brings, per node, a report (``ranks/node_report.py``), nothing (a missed report),
or a definitive death (its agent or actor is gone). The watch decides:

- ``lost``: a node is dead, or missed ``missed_reports`` reports in a row;
- ``ok``: every rank exited 0;
- ``exit``: a rank exited non-zero (the earliest one);
- ``hang``: armed (a job that beats: its first beat; any other: its first collective)
  and no running rank moved for ``hang_timeout_s``; the stuck rank is the one furthest
  behind (``behind_key``). Ranks that finished are not watched;
- ``startup_timeout``: a job that beats has not beaten within ``startup_timeout_s``.

Work per poll: one step per node, plus one per rank that exited or printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WatchPolicy:
    world: int
    missed_reports: int = 3
    hang_timeout_s: float = 120.0
    startup_timeout_s: float | None = None  # only for jobs that beat


@dataclass
class Verdict:
    kind: str  # ok | exit | lost | hang | startup_timeout
    lost: dict[int, str] = field(default_factory=dict)  # node rank -> why
    rank: int | None = None  # the failed (exit) or stuck (hang) rank
    code: int | None = None
    stuck_for_s: float = 0.0


@dataclass
class _Node:
    missed: int = 0
    progress: int = -1
    behind: dict[str, Any] | None = None


class GroupWatch:
    def __init__(self, policy: WatchPolicy, nodes: int, now: float) -> None:
        self.policy = policy
        self.nodes = [_Node() for _ in range(nodes)]
        self.started = now
        self.moved_at = now
        self.armed = False
        self.exited: dict[int, tuple[int, float]] = {}
        self.failed: list[tuple[float, int, int]] = []  # (exit unix, rank, code)
        self.first_beat_unix: float | None = None
        self.step: int | None = None
        self.beat0: dict[str, Any] | None = None

    def observe(
        self, reports: dict[int, dict[str, Any]], dead: dict[int, str], now: float
    ) -> Verdict | None:
        """Take one poll's reports (by node rank) and deaths; a verdict ends the attempt."""
        lost = dict(dead)
        steps = []
        for index, node in enumerate(self.nodes):
            report = reports.get(index)
            if report is None:
                if index not in dead:
                    node.missed += 1
                    if node.missed >= self.policy.missed_reports:
                        lost[index] = f"{node.missed} reports missed in a row"
                continue
            node.missed = 0
            self._take(node, report, now)
            if report.get("step") is not None:
                steps.append(report["step"])
        if steps:
            self.step = min(steps)
        if lost:
            return Verdict("lost", lost=lost)
        if self.failed:
            _, rank, code = min(self.failed)
            return Verdict("exit", rank=rank, code=code)
        if len(self.exited) == self.policy.world:
            return Verdict("ok")
        stalled = now - self.moved_at
        # A job that beats is watched from its first beat (before it, start-up work such
        # as a DeepSpeed build may sit in one call for minutes: startup_timeout_s covers
        # it); any other job from its first collective.
        beats = self.policy.startup_timeout_s is not None
        armed = self.first_beat_unix is not None if beats else self.armed
        if armed and stalled > self.policy.hang_timeout_s:
            behinds = [n.behind for n in self.nodes if n.behind is not None]
            if behinds:
                stuck = min(behinds, key=lambda b: b["key"])
                return Verdict("hang", rank=int(stuck["rank"]), stuck_for_s=stalled)
        timeout = self.policy.startup_timeout_s
        if self.first_beat_unix is None and timeout is not None and now - self.started > timeout:
            return Verdict("startup_timeout")
        return None

    def _take(self, node: _Node, report: dict[str, Any], now: float) -> None:
        if report["progress"] != node.progress:
            node.progress = report["progress"]
            self.moved_at = now
        node.behind = report.get("behind")
        self.armed = self.armed or bool(report.get("armed"))
        for rank, (code, unix) in report.get("exited", {}).items():
            rank = int(rank)
            if rank not in self.exited:
                self.exited[rank] = (code, unix)
                if code != 0:
                    self.failed.append((unix if unix is not None else float("inf"), rank, code))
        first = report.get("first_beat_unix")
        if first is not None and (self.first_beat_unix is None or first < self.first_beat_unix):
            self.first_beat_unix = first
        if report.get("beat0"):
            self.beat0 = report["beat0"]
