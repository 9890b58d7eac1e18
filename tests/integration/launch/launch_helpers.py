"""Helpers for the launch tests (imported by the test modules): kill an emulated node,
wait for files, read JSON."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path


def session_members(sid: int) -> list[int]:
    """Pids of every process in session ``sid`` (an emulated node and all it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def kill_node(sid: int) -> int:
    """SIGKILL the raylet, its Ray worker processes and the ranks they started."""
    killed = 0
    for _ in range(3):
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
