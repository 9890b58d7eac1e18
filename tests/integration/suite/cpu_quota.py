"""Degrade one local "node" for real: put its whole process session under a CPU quota.

A local node is one ``ray start --block`` process session (``local_cluster`` keeps its
pgid). ``CpuQuota(pgid, quota_us, period_us)`` creates a cgroup with that quota (cgroup v2
``cpu.max``, or v1 ``cpu.cfs_quota_us``), moves every process of the session and all
their descendants into it, and on exit moves them back and removes the cgroup. Processes
started there later inherit the cgroup. ``workers_only=True`` moves only the ranks (the
processes the node agent's zygote forked), leaving the raylet and its agents at full speed.

Use::

    with CpuQuota(state.pgids[2], 20_000, 100_000, name="degradetest"):
        ...  # node 2 runs on a fifth of a CPU
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
ZYGOTE = "gosok.launcher.ranks.zygote"


def cgroup_layout() -> tuple[str, Path] | None:
    """("v2", root) or ("v1", cpu controller root) when a writable cpu controller exists."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return ("v2", CGROUP_ROOT) if os.access(CGROUP_ROOT, os.W_OK) else None
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists() and os.access(v1, os.W_OK):
        return ("v1", v1)
    return None


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[3])


def session_pids(pgid: int) -> list[int]:
    """Every process in the session / process group ``pgid`` and all their descendants."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info:
                table[int(entry.name)] = info
    members = {pid for pid, (_, group, sid) in table.items() if group == pgid or sid == pgid}
    members.add(pgid)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return sorted(p for p in members if p in table)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_rank(pid: int) -> bool:
    """A rank: a process a node agent's zygote forked (not the raylet, an agent or a
    zygote)."""
    info = _stat(pid)
    return info is not None and ZYGOTE.encode() in _cmdline(info[0])


class CpuQuota:
    """Context manager: the session ``pgid`` runs under ``quota_us`` per ``period_us``."""

    def __init__(
        self,
        pgid: int,
        quota_us: int,
        period_us: int = 100_000,
        name: str = "node",
        workers_only: bool = False,
    ):
        layout = cgroup_layout()
        if layout is None:
            raise RuntimeError("no writable cgroup cpu controller")
        self.version, root = layout
        self.root = root
        self.path = root / f"gosok-{name}-{os.getpid()}"
        self.pgid = pgid
        self.quota_us = quota_us
        self.period_us = period_us
        self.workers_only = workers_only
        self.moved: list[int] = []

    def __enter__(self) -> CpuQuota:
        self.path.mkdir(exist_ok=True)
        if self.version == "v2":
            (self.path / "cpu.max").write_text(f"{self.quota_us} {self.period_us}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        self.refresh()
        return self

    def refresh(self) -> list[int]:
        """Move the session's current processes in (new children inherit it anyway)."""
        for pid in session_pids(self.pgid):
            if self.workers_only and not is_rank(pid):
                continue
            with contextlib.suppress(OSError):
                (self.path / "cgroup.procs").write_text(str(pid))
                if pid not in self.moved:
                    self.moved.append(pid)
        return self.moved

    def members(self) -> list[int]:
        text = (self.path / "cgroup.procs").read_text()
        return [int(x) for x in text.split()]

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            for pid in self.members():
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()
