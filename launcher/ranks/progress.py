"""Progress of a rank whose script never calls ``beat()``, observed from inside its process.

Every rank process (fresh: ``script_runner.main``; warm: the forked child) calls
``install()`` before its script runs. A daemon thread then samples, every ``SAMPLE_S``:

- torch.distributed's collectives, wrapped as soon as the script has imported
  ``torch.distributed``: calls entered, calls completed and the one in flight;
- the main thread's Python stack (each frame's code and line);
- inside a save (a frame whose function is named ``*save*``), the process's written
  bytes, so a long checkpoint write counts as progress while it writes.

Any change bumps ``tick``. The record ``{tick, entered, done, inflight, saving, unix}`` is
written in place to ``$GOSOK_PROGRESS_FILE`` (as ``beat()`` writes its line); the rank's node
reads it with every report. A rank stuck in a collective, a sleep or a dead lock keeps one
stack and one count; its tick stops. Collectives launched from C++ (DDP's gradient
buckets) are not counted, but a training loop's stack moves.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
from typing import Any

PROGRESS_ENV = "GOSOK_PROGRESS_FILE"
SAMPLE_S = 0.25
MAX_FRAMES = 64
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object",
    "all_to_all", "all_to_all_single", "barrier", "broadcast", "broadcast_object_list",
    "gather", "monitored_barrier", "recv", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "scatter", "send",
)  # fmt: skip


class _Counts:
    entered = 0
    done = 0
    inflight = ""


_counts = _Counts()
_installed = False


def _counted(fn: Any, name: str) -> Any:
    @functools.wraps(fn)
    def collective(*args: Any, **kwargs: Any) -> Any:
        _counts.entered += 1
        _counts.inflight = name
        try:
            return fn(*args, **kwargs)
        finally:
            _counts.done += 1
            _counts.inflight = ""

    collective.__gosok_counted__ = True
    return collective


def wrap_collectives() -> bool:
    """Count torch.distributed's collectives (once); False while it is not imported."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not hasattr(dist, "all_reduce"):
        return False
    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None and not getattr(fn, "__gosok_counted__", False):
            setattr(dist, name, _counted(fn, name))
    return True


def counts() -> tuple[int, int, str]:
    return _counts.entered, _counts.done, _counts.inflight


def stack_of(thread_id: int) -> tuple[tuple[int, int], ...]:
    """(code id, line) of each frame of a thread, innermost first."""
    frame = sys._current_frames().get(thread_id)
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        out.append((id(frame.f_code), frame.f_lineno))
        frame = frame.f_back
    return tuple(out)


def saving(thread_id: int) -> bool:
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if "save" in frame.f_code.co_name.lower():
            return True
        frame = frame.f_back
    return False


def written_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/io", "rb") as handle:
            for line in handle:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    return 0


class Sampler:
    """Watches one thread (the script's) and writes its progress record on change."""

    def __init__(self, path: str, thread_id: int, every_s: float = SAMPLE_S) -> None:
        self.path = path
        self.thread_id = thread_id
        self.every_s = every_s
        self.tick = 0
        self._last: tuple = ()
        self._fd: int | None = None
        self._own_bytes = 0  # what this sampler wrote itself is not the rank's progress

    def sample(self) -> bool:
        """Take one sample; True when it showed progress (and was written)."""
        wrap_collectives()
        entered, done, inflight = counts()
        is_saving = saving(self.thread_id)
        state = (entered, done, inflight, stack_of(self.thread_id), is_saving)
        if is_saving:
            state += (written_bytes() - self._own_bytes,)
        if state == self._last:
            return False
        self._last = state
        self.tick += 1
        record = {
            "tick": self.tick,
            "entered": entered,
            "done": done,
            "inflight": inflight,
            "saving": is_saving,
            "unix": time.time(),
        }
        self._write(json.dumps(record).encode() + b"\n")
        return True

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self._fd, line, 0)
        os.ftruncate(self._fd, len(line))
        self._own_bytes += len(line)

    def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.sample()
            time.sleep(self.every_s)


def install(env: Any = None) -> Sampler | None:
    """Start watching the calling thread (the one about to run the script) when
    ``$GOSOK_PROGRESS_FILE`` is set; once per process."""
    global _installed
    path = (os.environ if env is None else env).get(PROGRESS_ENV)
    if not path or _installed:
        return None
    _installed = True
    sampler = Sampler(path, threading.get_ident())
    threading.Thread(target=sampler.run, name="gosok-progress", daemon=True).start()
    return sampler
