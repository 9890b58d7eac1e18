"""Rank side of ``gosok launch``: the process that runs one rank's script, and the
functions that start, watch, signal and stop it from the rank's node.

A fresh rank is ``python -m gosok.launcher.ranks.script_runner <script.py | --module name>
args``, executed by a zygote that preloads nothing: it asks the kernel to kill it when the
zygote dies (no orphans when a node or its agent goes), arranges a Python stack dump on
SIGUSR1 (hang diagnosis), then runs the script as ``__main__`` with ``sys.argv = [script,
*args]``, so a torchrun-style script runs unchanged. A warm rank runs the same ``[script,
args...]`` forked from the node's zygote (``zygote.py``, ``forked.py``), which gives it the
same argv, env, cwd, ``__main__``, signals, stack dumps and exit codes. No shell is
involved anywhere: argv is a list from config to ``execve``.

The node-side functions (``spawn_rank``, ``poll_rank``, ``log_tail``, ``dump_stack``,
``stop_rank``) take a context with ``rank``, ``node_id`` and a ``state`` dict: the node
agent's per-rank slot (``agent.py``); the child (a ``ZygoteChild``) is kept in
``ctx.state["child"]``.

With ``GOSOK_PROFILE_FILE`` set (``launch.profile=true``) the rank appends start-up marks
there: ``start``, ``ready`` (torch imported), ``pg_init_start`` / ``pg_init_end``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import faulthandler
import hashlib
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gosok.launcher.ranks import progress
from gosok.launcher.ranks.heartbeat import read_beat

PR_SET_PDEATHSIG = 1
TEE_CHUNK_BYTES = 64 * 1024
ERROR_FILE_BYTES = 64 * 1024
ERROR_TEXT_CHARS = 2000
RUNNER_MODULE = "gosok.launcher.ranks.script_runner"
PROFILE_ENV = "GOSOK_PROFILE_FILE"


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the zygote died before prctl took effect
        os._exit(137)


def _arm_stack_dump() -> None:
    path = os.environ.get("GOSOK_STACK_FILE")
    if path:
        handle = open(path, "a")  # noqa: SIM115  (kept open for the life of the process)
        faulthandler.register(signal.SIGUSR1, file=handle, all_threads=True)


def _arm_profile() -> None:
    """Profile marks of a fresh rank: torch.distributed is imported here (so its
    ``init_process_group`` can be timed), which moves that import before the script."""
    path = os.environ.get(PROFILE_ENV)
    if not path:
        return
    from gosok.launcher.ranks import forked

    forked.mark(path, "start", warm=False)
    with contextlib.suppress(ImportError):
        import torch.distributed  # noqa: F401

    forked.arm_profile(path, warm=False)


def main(argv: list[str]) -> None:
    _die_with_parent()
    _arm_stack_dump()
    _arm_profile()
    progress.install()
    if not argv:
        sys.exit(f"usage: python -m {RUNNER_MODULE} <script.py | --module mod> args")
    if argv[0] == "--module":
        module, args = argv[1], argv[2:]
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    script, args = argv[0], argv[1:]
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


# ---- node side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """What every rank runs: ``python`` runs ``target`` (a script's path, or with ``module``
    a module's name) with ``args``, as ``python script args`` / ``python -m name args``
    would. Travels to the nodes as a dict (``asdict``)."""

    python: str
    target: str
    args: tuple[str, ...] = ()
    module: bool = False

    def main(self) -> list[str]:
        """What follows the interpreter: ``[script, *args]`` or ``["--module", name, *args]``
        (what a zygote's child runs)."""
        return [*(["--module"] if self.module else []), self.target, *self.args]

    def fresh_argv(self) -> list[str]:
        """A fresh interpreter running it through this runner."""
        return [self.python, "-m", RUNNER_MODULE, *self.main()]


def node_dir(log_dir: str) -> Path:
    """This node's own directory for a rank group's files: nothing written by a rank is
    assumed visible to the driver; its output travels back with every poll."""
    key = hashlib.sha256(str(log_dir).encode()).hexdigest()[:16]
    from gosok.launcher.ranks.private import private_dir

    mine = private_dir(Path(tempfile.gettempdir()) / f"gosok-ranks-{os.getuid()}")
    return private_dir(mine / key)


def shipped(spec: dict[str, Any]) -> tuple[Program, str]:
    """The program and cwd with the job's shipped code unpacked on this node (once per
    node): the script is the unpacked copy; a cwd this node does not have becomes the
    shipped code's root."""
    program, cwd = Program(**spec["program"]), spec["cwd"]
    bundle = spec.get("bundle")
    if not bundle:
        # The launch directory may exist on the driver's host only (its /tmp): a module
        # (the recipe) then runs from this node's own directory for the job.
        return program, cwd if Path(cwd).is_dir() else str(node_dir(spec["log_dir"]))
    from gosok.launcher.ranks.shipping import Bundle, cache_root, unpack

    root = unpack(Bundle(**bundle), cache_root())
    program = dataclasses.replace(program, target=str(root / spec["bundle_script"]))
    if not Path(cwd).is_dir():
        cwd = str(root)
    return program, cwd


def rank_files(log_dir: str, rank: int) -> dict[str, str]:
    base = node_dir(log_dir) / f"rank-{rank}"
    return {
        "log": f"{base}.log",
        "beat": f"{base}.beat",
        "stack": f"{base}.stack.txt",
        "marks": f"{base}.profile.jsonl",
        "progress": f"{base}.progress",
        "error": f"{base}.error.json",
    }


def spawn_rank(
    ctx: Any,
    spec: dict[str, Any],
    zygote: Any,
    base_env: dict[str, str] | None = None,
    on_exit: Callable[[], None] | None = None,
    execute: bool = False,
    channel: int | None = None,
) -> dict[str, Any]:
    """Start this rank's child, forked from ``zygote`` (a ``zygote.Zygote``) to run the
    program, or with ``execute``, forked to execute the fresh interpreter (whose parent,
    the zygote, started from a scrubbed environment). spec: program (``Program`` as a
    dict), env (job-wide), rank_env (per rank), cwd, log_dir, tee_ranks, profile.
    ``base_env`` (default: this process's) is what the job's env is laid over; ``on_exit``
    is called from a thread when the child has ended; ``channel``: a descriptor the child
    inherits (``workers.py``)."""
    files = rank_files(spec["log_dir"], ctx.rank)
    program, cwd = shipped(spec)
    argv = program.fresh_argv()
    for key in ("log", "beat", "stack", "marks", "progress", "error"):
        Path(files[key]).unlink(missing_ok=True)
    from gosok.launcher.config.secrets import is_secret_name

    # Secrets in the node's own environment (a cluster token, a key in the shell that
    # started Ray) do not reach the job; what it needs it is given in spec env.
    inherited = os.environ if base_env is None else base_env
    env = {k: v for k, v in inherited.items() if not is_secret_name(k)}
    env.update(spec["env"])
    env.update(spec.get("rank_env", {}).get(str(ctx.rank), {}))
    env.update(
        GOSOK_HEARTBEAT_FILE=files["beat"],
        GOSOK_STACK_FILE=files["stack"],
        GOSOK_RANK_LOG=files["log"],
        GOSOK_PROGRESS_FILE=files["progress"],
        TORCHELASTIC_ERROR_FILE=files["error"],
        PYTHONUNBUFFERED="1",
    )
    if spec.get("profile"):
        env[PROFILE_ENV] = files["marks"]
    env.setdefault("OMP_NUM_THREADS", "1")
    spawned = time.time()
    state: dict[str, Any] = {
        "files": files,
        "tee": ctx.rank in spec.get("tee_ranks", []),
        "profile": bool(spec.get("profile")),
        "offset": 0,
        "spawn_unix": spawned,
        "exit_unix": None,
    }

    def ended() -> None:
        state["exit_unix"] = time.time()
        if on_exit is not None:
            on_exit()

    if execute:
        program = argv[0] if os.sep in argv[0] else shutil.which(argv[0]) or argv[0]
        found, runnable = os.path.isfile(program), os.access(program, os.X_OK)
        for ok, code in ((found, errno.ENOENT), (runnable, errno.EACCES)):
            if not ok:  # as Popen says it (FileNotFoundError, PermissionError), unforked
                raise OSError(code, os.strerror(code), argv[0])
        argv = [program, *argv[1:]]
        proc = zygote.spawn(argv, env, cwd, files["log"], True, ended, channel)
    else:
        proc = zygote.spawn(program.main(), env, cwd, files["log"], False, ended, channel)
    state["proc"] = proc
    ctx.state["child"] = state
    return {
        "rank": ctx.rank,
        "pid": proc.pid,
        "node_id": ctx.node_id,
        "actor_pid": os.getpid(),
        "start": "fresh" if execute else "warm",
    }


def _returncode(proc: Any) -> int | None:
    """The child's exit code (None while it runs); a forked child whose zygote is gone
    died with it: -SIGKILL."""
    return proc.poll()


def _signal(proc: Any, sig: int, group: bool) -> None:
    """Signal the child (its process group with ``group``) if it has not been reaped."""
    with contextlib.suppress(Exception):
        proc.send_signal(sig, group=group)


def _read_new_output(state: dict[str, Any]) -> str:
    try:
        with open(state["files"]["log"], "rb") as handle:
            handle.seek(state["offset"])
            chunk = handle.read(TEE_CHUNK_BYTES)
    except OSError:
        return ""
    cut = chunk.rfind(b"\n") + 1 if _returncode(state["proc"]) is None else len(chunk)
    state["offset"] += cut
    return chunk[:cut].decode(errors="replace")


def read_marks(path: str) -> list[dict[str, Any]]:
    import json

    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    marks = []
    for line in lines:
        with contextlib.suppress(ValueError):
            marks.append(json.loads(line))
    return marks


def read_error_file(path: str) -> dict[str, str] | None:
    """The exception a rank recorded with torch's ``errors.record`` in
    ``TORCHELASTIC_ERROR_FILE`` (torch's ``error_handler.py`` writes
    ``{"message": {"message": "Type: text", "extraInfo": {"py_callstack", "timestamp"}}}``;
    a plain string message is accepted too), or None when there is none."""
    import json

    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(ERROR_FILE_BYTES))
        body = data["message"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    extra = body.get("extraInfo", {}) if isinstance(body, dict) else {}
    text = body.get("message", "") if isinstance(body, dict) else body
    return {
        "message": str(text)[:ERROR_TEXT_CHARS],
        "traceback": str(extra.get("py_callstack", ""))[-ERROR_FILE_BYTES // 2 :],
        "timestamp": str(extra.get("timestamp", "")),
    }


def poll_rank(ctx: Any) -> dict[str, Any]:
    state = ctx.state["child"]
    proc = state["proc"]
    returncode = _returncode(proc)
    answer = {
        "rank": ctx.rank,
        "node_id": ctx.node_id,
        "pid": proc.pid,
        "returncode": returncode,
        "exit_unix": (state["exit_unix"] or time.time()) if returncode is not None else None,
        "beat": read_beat(state["files"]["beat"]),
        "progress": read_beat(state["files"]["progress"]),
        "output": _read_new_output(state),
    }
    if returncode:
        answer["error"] = read_error_file(state["files"]["error"])
    if state.get("profile"):
        answer["marks"] = read_marks(state["files"]["marks"])
        answer["spawn_unix"] = state["spawn_unix"]
    return answer


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
    if not state or _returncode(state["proc"]) is not None:
        return ""
    _signal(state["proc"], signal.SIGUSR1, group=False)
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
    if _returncode(proc) is None:
        _signal(proc, signal.SIGTERM, group=True)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL, group=True)
            with contextlib.suppress(Exception):
                proc.wait(5)
    return _returncode(proc)


if __name__ == "__main__":
    main(sys.argv[1:])
