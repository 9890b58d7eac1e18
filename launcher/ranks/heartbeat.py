"""Heartbeats from a rank process to gosok: the step it reached and a few metrics.

A rank calls ``beat(step, loss=..., tokens_per_s=...)`` after each step; the line is
written in place to the file named by ``$GOSOK_HEARTBEAT_FILE`` (a no-op when the
variable is unset, e.g. under plain torchrun). The rank's actor on the same node reads it
when the driver polls, and the driver declares a hang when the step stops moving for
``fault.hang_timeout_s``. Scripts in script mode may call it too; the recipe always does.

Use: ``from gosok.launcher.ranks.heartbeat import beat; beat(step, loss=float(loss))``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_fd: int | None = None
_path: str | None = None


def beat(step: int, **metrics: Any) -> None:
    global _fd, _path
    path = os.environ.get("GOSOK_HEARTBEAT_FILE")
    if not path:
        return
    if _fd is None or _path != path:
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        _path = path
    line = json.dumps({"step": int(step), "unix": time.time(), **metrics}).encode()
    # Write then truncate: a reader sees either the old or the new line (it retries on
    # a torn read), never needs a rename per step.
    os.pwrite(_fd, line + b"\n", 0)
    os.ftruncate(_fd, len(line) + 1)


def read_beat(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    try:
        return json.loads(raw.splitlines()[0]) if raw else None
    except (ValueError, IndexError):
        return None
