"""Rank side of ``gosok launch``: the process that runs one rank's script, and the
functions a rank actor uses to start, watch, signal and stop it.

The child is ``python -m gosok.launcher.ranks.script_runner <script.py | --module name> args``:
it asks the kernel to kill it when its actor dies (no orphans when a node or actor goes),
arranges a Python stack dump on SIGUSR1 (hang diagnosis), then runs the script as
``__main__`` with ``sys.argv = [script, *args]``, so a torchrun-style script runs
unchanged. No shell is involved anywhere: argv is a list from config to ``execve``.

The actor-side functions (``spawn_rank``, ``poll_rank``, ``dump_stack``, ``stop_rank``)
run through ``RankActor.call`` and keep the child in ``ctx.state``.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gosok.launcher.ranks.heartbeat import read_beat

PR_SET_PDEATHSIG = 1
TEE_CHUNK_BYTES = 64 * 1024


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the actor died before prctl took effect
        os._exit(137)


def _arm_stack_dump() -> None:
    path = os.environ.get("GOSOK_STACK_FILE")
    if path:
        handle = open(path, "a")  # noqa: SIM115  (kept open for the life of the process)
        faulthandler.register(signal.SIGUSR1, file=handle, all_threads=True)


def main(argv: list[str]) -> None:
    _die_with_parent()
    _arm_stack_dump()
    if not argv:
        sys.exit(
            "usage: python -m gosok.launcher.ranks.script_runner <script.py | --module mod> args"
        )
    if argv[0] == "--module":
        module, args = argv[1], argv[2:]
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    script, args = argv[0], argv[1:]
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


# ---- actor side -------------------------------------------------------------------------


def rank_files(log_dir: str, rank: int) -> dict[str, str]:
    base = Path(log_dir) / f"rank-{rank}"
    return {
        "log": f"{base}.log",
        "beat": f"{base}.beat",
        "stack": f"{base}.stack.txt",
    }


def spawn_rank(ctx: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Start this rank's child. spec: argv, env (job-wide), rank_env (per rank), cwd,
    log_dir, tee_ranks."""
    files = rank_files(spec["log_dir"], ctx.rank)
    Path(spec["log_dir"]).mkdir(parents=True, exist_ok=True)
    for key in ("beat", "stack"):
        Path(files[key]).unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(spec["env"])
    env.update(spec.get("rank_env", {}).get(str(ctx.rank), {}))
    env.update(
        GOSOK_HEARTBEAT_FILE=files["beat"],
        GOSOK_STACK_FILE=files["stack"],
        GOSOK_RANK_LOG=files["log"],
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(files["log"], "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        spec["argv"],
        env=env,
        cwd=spec["cwd"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    log.close()
    state: dict[str, Any] = {
        "proc": proc,
        "files": files,
        "tee": ctx.rank in spec.get("tee_ranks", []),
        "offset": 0,
        "spawn_unix": time.time(),
        "exit_unix": None,
    }

    def wait_exit() -> None:
        proc.wait()
        state["exit_unix"] = time.time()

    threading.Thread(target=wait_exit, daemon=True).start()
    ctx.state["child"] = state
    return {"rank": ctx.rank, "pid": proc.pid, "node_id": ctx.node_id, "actor_pid": os.getpid()}


def _read_new_output(state: dict[str, Any]) -> str:
    try:
        with open(state["files"]["log"], "rb") as handle:
            handle.seek(state["offset"])
            chunk = handle.read(TEE_CHUNK_BYTES)
    except OSError:
        return ""
    cut = chunk.rfind(b"\n") + 1 if state["proc"].poll() is None else len(chunk)
    state["offset"] += cut
    return chunk[:cut].decode(errors="replace")


def poll_rank(ctx: Any) -> dict[str, Any]:
    state = ctx.state["child"]
    proc = state["proc"]
    returncode = proc.poll()
    return {
        "rank": ctx.rank,
        "node_id": ctx.node_id,
        "pid": proc.pid,
        "returncode": returncode,
        "exit_unix": state["exit_unix"] if returncode is not None else None,
        "beat": read_beat(state["files"]["beat"]),
        "output": _read_new_output(state) if state["tee"] else "",
    }


def log_tail(ctx: Any, lines: int = 20) -> str:
    state = ctx.state.get("child")
    if not state:
        return ""
    try:
        data = Path(state["files"]["log"]).read_bytes()[-16384:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def dump_stack(ctx: Any, wait_s: float = 1.0) -> str:
    """Ask the child for a stack dump of all its threads (SIGUSR1) and return it."""
    state = ctx.state.get("child")
    if not state or state["proc"].poll() is not None:
        return ""
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["proc"].pid, signal.SIGUSR1)
    path = Path(state["files"]["stack"])
    deadline = time.monotonic() + wait_s
    text = ""
    while time.monotonic() < deadline:
        time.sleep(0.1)
        text = path.read_text(errors="replace") if path.exists() else ""
        if text.count("File ") and text.endswith("\n"):
            time.sleep(0.1)
            text = path.read_text(errors="replace")
            break
    return text


def stop_rank(ctx: Any, grace_s: float = 2.0) -> int | None:
    """SIGTERM the child's process group, SIGKILL after grace_s; returns its exit code."""
    state = ctx.state.get("child")
    if not state:
        return None
    proc = state["proc"]
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


if __name__ == "__main__":
    main(sys.argv[1:])
