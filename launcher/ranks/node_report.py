"""One message per node per poll: what the node's monitor (its node agent) tells the driver
about all of its ranks at once, so the driver's work per poll grows with nodes, not ranks.

A report::

    {"ranks": 8,                         # ranks of the job on this node
     "exited": {rank: [code, unix]},     # every rank that has ended so far
     "errors": {rank: {...}},            # what a failed rank recorded with torch's @record
     "output": {rank: text},             # new output since the last report
     "progress": 17,                     # bumps when any running rank moved
     "armed": True,                      # a rank has beaten or entered a collective
     "behind": {"rank": 3, "key": [...], "pid": 123} | None,  # the running rank furthest back
     "step": 40 | None,                  # lowest heartbeat step of the node's ranks
     "first_beat_unix": float | None,
     "beat0": {...} | None,              # rank 0's heartbeat (the recipe's metrics)
     "marks": [...], "spawn_unix": ...}  # rank 0's start-up marks (launch.profile)

A rank "moves" when its heartbeat step or its progress tick (``progress.py``) changes.
"Behind" orders running ranks by (heartbeat step, collectives entered, not waiting in
one, rank): in a hung collective the rank that never entered it is the one the others
wait for.

Use: ``reporter = NodeReporter(); reporter.add(poll_rank(slot)) ...; reporter.report()``.
"""

from __future__ import annotations

from typing import Any


def behind_key(answer: dict[str, Any]) -> list[int]:
    beat = answer.get("beat") or {}
    progress = answer.get("progress") or {}
    step = beat.get("step")
    return [
        int(step) if isinstance(step, int) else -1,
        int(progress.get("entered", 0)),
        1 if progress.get("inflight") else 0,
        int(answer["rank"]),
    ]


def _moved_key(answer: dict[str, Any]) -> tuple[Any, Any]:
    beat = answer.get("beat") or {}
    progress = answer.get("progress") or {}
    return beat.get("step"), progress.get("tick")


class NodeReporter:
    """Folds one node's rank answers (``script_runner.poll_rank``) into reports."""

    def __init__(self) -> None:
        self.progress = 0
        self.armed = False
        self.first_beat_unix: float | None = None
        self._keys: dict[int, tuple[Any, Any]] = {}
        self._latest: dict[int, dict[str, Any]] = {}
        self._output: dict[int, str] = {}

    def add(self, answer: dict[str, Any]) -> None:
        rank = int(answer["rank"])
        self._latest[rank] = answer
        if answer.get("output"):
            self._output[rank] = self._output.get(rank, "") + answer["output"]
        beat = answer.get("beat")
        if beat:
            self.armed = True
            unix = beat.get("unix")
            if isinstance(unix, (int, float)) and (
                self.first_beat_unix is None or unix < self.first_beat_unix
            ):
                self.first_beat_unix = float(unix)
        if (answer.get("progress") or {}).get("entered"):
            self.armed = True
        key = _moved_key(answer)
        if answer.get("returncode") is None and self._keys.get(rank) != key:
            self.progress += 1
        self._keys[rank] = key

    def report(self) -> dict[str, Any]:
        latest = self._latest
        running = [a for a in latest.values() if a.get("returncode") is None]
        behind = min(running, key=behind_key, default=None)
        steps = [a["beat"]["step"] for a in latest.values() if a.get("beat")]
        out: dict[str, Any] = {
            "ranks": len(latest),
            "exited": {
                r: [a["returncode"], a.get("exit_unix")]
                for r, a in latest.items()
                if a.get("returncode") is not None
            },
            "errors": {r: a["error"] for r, a in latest.items() if a.get("error")},
            "output": self._output,
            "progress": self.progress,
            "armed": self.armed,
            "behind": None
            if behind is None
            else {"rank": int(behind["rank"]), "key": behind_key(behind), "pid": behind.get("pid")},
            "step": min(steps) if steps else None,
            "first_beat_unix": self.first_beat_unix,
            "beat0": (latest.get(0) or {}).get("beat"),
        }
        if 0 in latest and "marks" in latest[0]:
            out["marks"] = latest[0]["marks"]
            out["spawn_unix"] = latest[0].get("spawn_unix")
        self._output = {}
        return out
