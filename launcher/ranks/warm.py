"""Warm rank processes: a per-node fork server ("zygote") that imports torch (and whatever
else is named) once, then forks each rank's script from that warm interpreter, so a rank
starts in milliseconds instead of paying interpreter start-up plus ``import torch``
(1.5-3 s) on every rank of every launch.

Use::

    from gosok.launcher.ranks.warm import start_server

    server = start_server("/tmp/gosok-1000/warm.sock", preload=("torch",))
    child = server.spawn(["train.py", "--lr", "3e-4"], env=full_env, cwd=workdir,
                         stdout_path="rank-0.log", stack_file="rank-0.stack.txt")
    child.poll()              # None while it runs, then its exit code (-N: killed by signal N)
    child.wait(timeout=600)   # or subprocess.TimeoutExpired
    server.stop()             # kills live children, removes the socket, server exits

From a shell: ``python -m gosok.launcher.ranks.warm --socket PATH --preload torch,deepspeed
[--die-with-parent]``, then ``connect(PATH)`` from Python. ``argv`` is ``[script, args...]``
or ``["--module", name, args...]``, exactly as for ``script_runner`` (beside this module).

What a child sees is what a fresh ``python -m ...script_runner argv...`` would give it:
``sys.argv``, ``sys.path[0]`` (script dir, or cwd for ``--module``), ``__name__ ==
"__main__"``, cwd, ``os.environ`` replaced by the request's *complete* env (C-level
environ too, so torch and NCCL read RANK/MASTER_ADDR...), stdin from /dev/null, stdout and
stderr appended to ``stdout_path`` with fresh ``sys.std*`` objects (PYTHONUNBUFFERED and
PYTHONIOENCODING of the child env honoured), the interpreter's start-up signal
dispositions, a faulthandler stack dump on SIGUSR1 to ``stack_file`` (default: env
GOSOK_STACK_FILE), Python's ``random`` (and numpy's global RNG, if loaded) re-seeded from
the OS, torch's intra-op thread count set from OMP_NUM_THREADS/MKL_NUM_THREADS when given
(torch's default RNG seed is fixed at import, the same as in a fresh interpreter). Its exit
status is a fresh interpreter's: 0; the SystemExit code (None -> 0, other non-int ->
printed, 1); 1 after ``sys.excepthook`` for an uncaught exception; death by SIGINT after an
uncaught KeyboardInterrupt; 2 for a missing script. Non-daemon threads are joined and
atexit handlers run before ``os._exit``; a child never returns into the server loop. A
``--module`` that was preloaded is dropped from ``sys.modules`` before it runs as
``__main__`` (its imports stay loaded), as ``python -m`` finds it. With GOSOK_PROFILE_FILE
in the child env, start-up marks (``start``, ``ready``, ``init_process_group`` start and
end) are appended there as JSON lines (``mark``, ``arm_profile``).

Decisions:

* Process group: each child is the leader of its own process group (``setpgid(0, 0)``, set
  by server and child to close the race), in the server's session, no ``setsid``: the same
  as today's ``Popen(process_group=0)``. ``kill()``/``terminate()`` signal the whole group
  (the rank plus its dataloader workers); ``send_signal(sig)`` only the rank unless
  ``group=True`` (SIGUSR1 must reach the rank only).
* Signals go through the server, which signals only children it has not reaped yet, so a
  recycled pid is never hit. Signalling ``child.pid`` directly also works, but races exit.
  Signals are blocked across the fork until the child has its start-up dispositions back,
  so a SIGTERM sent right after ``spawn`` is not swallowed by a copy of the server's handler.
* Reaping: SIGCHLD wakes the single-threaded ``selectors`` loop (``set_wakeup_fd``), which
  reaps with ``waitpid(-1, WNOHANG)`` and keeps each exit status under a server-assigned
  child id (not the pid, which can be reused); the last 4096 exits are kept. ``poll`` asks
  for the status; ``wait`` is parked in the server and answered when the child is reaped or
  the timeout passes. One short connection per request, so handles are thread-safe.
* Death coupling: a child dies with the server (PR_SET_PDEATHSIG=SIGKILL) and, unless
  ``die_with_caller=False``, with the process that asked for it (pid from SO_PEERCRED,
  watched with a pidfd; its process group gets SIGKILL) -- the equivalent of today's
  PDEATHSIG towards the rank actor. With ``--die-with-parent`` the server gets SIGTERM when
  its parent *thread* exits (prctl semantics: start it from a long-lived thread), then
  stops as for ``stop()``. ``os.getppid()`` in a child is the server's pid.
* Threads: the server starts none; after the preload it refuses to serve if
  ``threading.active_count() != 1`` or torch has initialised CUDA (it sets
  PYTORCH_NVML_BASED_CUDA_CHECK=1 so availability checks do not). Native threads (e.g.
  OpenBLAS's pool) are reported in ``hello`` and the log, not refused. OMP_NUM_THREADS and
  MKL_NUM_THREADS are removed from the server's own env so it keeps library defaults.
* Interpreter start-up settings (``STARTUP_ENV_KEYS``: PYTHONPATH, PYTHONHASHSEED,
  LD_LIBRARY_PATH, ...) cannot change after start, so a spawn whose env differs from the
  server's in them is refused (start that rank cold). All children share the server's
  str-hash seed. Env read by preloaded modules at import time comes from the server's env.
* ``env_fingerprint`` hashes the interpreter, ``sys.path[1:]`` and, per preloaded top-level
  package, the location, mtime and size of its file and its installed version, all read
  from disk; ``hello`` returns the value at start and one recomputed now, so
  ``handle.stale()`` tells a caller to replace a server whose environment changed. A fresh
  ``python -c`` gets the same value as the server (``sys.path[0]`` is left out).
* Security: the socket is 0600 in a 0700 directory owned by the user (checked, never
  loosened); every connection's SO_PEERCRED uid must equal the server's, and the client
  checks the server's. Messages are 4-byte length-prefixed JSON: data, never code.
* ``gc.freeze()`` after the preload keeps the preloaded heap shared copy-on-write.

stdlib only: nothing from gosok is imported here, so the module keeps working while the
package around it moves; a child loads ``progress.py`` (stdlib only) to watch itself.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import faulthandler
import gc
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STARTUP_ENV_KEYS",
    "ServerHandle",
    "WarmChild",
    "WarmServer",
    "WarmServerError",
    "arm_profile",
    "connect",
    "default_socket_path",
    "env_fingerprint",
    "mark",
    "start_server",
]

PROTOCOL = 1
MODULE = "gosok.launcher.ranks.warm"
PR_SET_PDEATHSIG = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEPT_EXITS = 4096
SOCKET_PATH_MAX = 107
CALLER_POLL_S = 0.5  # only where pidfd_open is missing
_HEADER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")

# Read once when an interpreter starts; a forked child cannot pick up different values.
STARTUP_ENV_KEYS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONHASHSEED",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONOPTIMIZE",
    "PYTHONDEVMODE",
    "PYTHONUTF8",
    "PYTHONMALLOC",
    "PYTHONWARNINGS",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
)
THREAD_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
PROFILE_ENV = "GOSOK_PROFILE_FILE"  # set: the child appends start-up marks there


class WarmServerError(RuntimeError):
    """The warm server refused a request, or could not be started or reached."""


# ---- shared helpers ---------------------------------------------------------------------


def env_fingerprint(preload: Iterable[str], path: Sequence[str] | None = None) -> str:
    """sha256 over the interpreter, the import path (default ``sys.path[1:]``) and, for each
    preloaded top-level package, where it is on disk, its file's mtime and size and its
    installed version. Read from disk, not from loaded modules, so it can be recomputed
    later (or in another process) to see whether the environment changed."""
    search = list(sys.path[1:] if path is None else path)
    importlib.invalidate_caches()
    digest = hashlib.sha256()

    def add(*parts: Any) -> None:
        digest.update(json.dumps(parts, default=str).encode())
        digest.update(b"\0")

    add("python", sys.executable, sys.version)
    add("path", search)
    for top in sorted({name.partition(".")[0] for name in preload if name}):
        add("module", top, *_module_identity(top, search))
    return digest.hexdigest()


def _module_identity(top: str, search: list[str]) -> list[Any]:
    spec = importlib.machinery.PathFinder.find_spec(top, search)
    if spec is None:
        return ["missing"]
    locations = list(spec.submodule_search_locations or [])
    origin = spec.origin if spec.has_location else (locations[0] if locations else None)
    ident: list[Any] = [origin]
    with contextlib.suppress(OSError, TypeError):
        st = os.stat(origin)
        ident += [st.st_mtime_ns, st.st_size]
    dist = next(iter(importlib.metadata.distributions(name=top, path=search)), None)
    ident.append(dist.version if dist is not None else None)
    return ident


def mark(path: str, event: str, **fields: Any) -> None:
    """Append ``{"event", "unix", ...}`` as one JSON line to ``path`` (profile marks of a
    rank's start-up; a failing write is ignored: marks never fail a rank)."""
    line = json.dumps({"event": event, "unix": time.time(), **fields}) + "\n"
    with contextlib.suppress(OSError):
        with open(path, "a") as handle:
            handle.write(line)


def arm_profile(path: str, warm: bool) -> None:
    """Mark ``ready`` (user code can start) now and, when ``torch.distributed`` is loaded,
    wrap its ``init_process_group`` so its start and end are marked too. Only used when a
    launch asks for a profile (``GOSOK_PROFILE_FILE`` set)."""
    mark(path, "ready", warm=warm, torch_loaded="torch" in sys.modules)
    dist = sys.modules.get("torch.distributed")
    original = getattr(dist, "init_process_group", None)
    if original is None or getattr(original, "_gosok_marked", False):
        return

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        mark(path, "pg_init_start")
        try:
            return original(*args, **kwargs)
        finally:
            mark(path, "pg_init_end")

    init_process_group.__wrapped__ = original  # type: ignore[attr-defined]
    init_process_group.__doc__ = original.__doc__
    init_process_group._gosok_marked = True  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group


def default_socket_path(name: str = "warm") -> str:
    """``$XDG_RUNTIME_DIR/gosok/<name>.sock``, else ``/tmp/gosok-<uid>/<name>.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "gosok" if runtime else Path(f"/tmp/gosok-{os.getuid()}")
    return str(base / f"{name}.sock")


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700, or check an existing one is ours and 0700 (never loosened or
    tightened for the caller: a shared directory such as /tmp is refused)."""
    from gosok.launcher.ranks.private import UnsafeDirectoryError, private_dir

    try:
        private_dir(path, set_aside=False)  # it may hold another server's live socket
    except UnsafeDirectoryError as err:
        raise WarmServerError(f"the warm server's socket directory: {err}") from err


def _check_socket_path(path: str) -> None:
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise WarmServerError(f"socket path is longer than {SOCKET_PATH_MAX} bytes: {path}")


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


def _frame(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise WarmServerError(f"message of {len(body)} bytes is over {MAX_MESSAGE_BYTES}")
    return _HEADER.pack(len(body)) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise WarmServerError("the warm server closed the connection without replying")
        chunks += chunk
    return bytes(chunks)


def _set_pdeathsig(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[gosok-warm {os.getpid()} {stamp}] {message}", file=sys.stderr, flush=True)


def _native_threads() -> list[str]:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for task in tasks:
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            names.append("?")
    return names


# ---- client side ------------------------------------------------------------------------


@dataclass
class WarmChild:
    """A rank forked by the warm server; Popen-like, but every call asks the server, whose
    child it is. ``returncode`` is negative (-N) when signal N ended it."""

    server: ServerHandle = field(repr=False)
    id: int
    pid: int
    args: list[str] = field(default_factory=list)
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            reply = self.server.request({"op": "poll", "id": self.id})
            self.returncode = reply["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child ends; ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        if self.returncode is not None:
            return self.returncode
        wire_timeout = None if timeout is None else timeout + 10.0
        reply = self.server.request(
            {"op": "wait", "id": self.id, "timeout": timeout}, timeout=wire_timeout
        )
        if reply["returncode"] is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = reply["returncode"]
        return self.returncode

    def send_signal(self, sig: int, group: bool = False) -> bool:
        """Signal the child (its whole process group with ``group=True``); False when it
        had already ended."""
        if self.returncode is not None:
            return False
        reply = self.server.request(
            {"op": "signal", "id": self.id, "sig": int(sig), "group": bool(group)}
        )
        return bool(reply["sent"])

    def terminate(self) -> bool:
        return self.send_signal(signal.SIGTERM, group=True)

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL, group=True)


class ServerHandle:
    """Talks to one warm server over its socket; ``proc`` is set when we started it."""

    def __init__(
        self,
        socket_path: str,
        proc: subprocess.Popen | None = None,
        log_path: str | None = None,
    ) -> None:
        self.socket_path = str(socket_path)
        self.proc = proc
        self.log_path = log_path
        self.info: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"ServerHandle({self.socket_path!r}, pid={self.info.get('pid')})"

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.info.get("pid")

    def request(self, message: Mapping[str, Any], timeout: float | None = 10.0) -> dict:
        """Send one request on a fresh connection and return the reply; a refusal raises
        ``WarmServerError`` with the server's reason."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10.0 if timeout is None else timeout)
            sock.connect(self.socket_path)
            _pid, uid, _gid = _peer(sock)
            if uid != os.getuid():
                raise WarmServerError(f"{self.socket_path} is served by uid {uid}, not ours")
            sock.sendall(_frame(message))
            sock.settimeout(timeout)
            (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
            reply = json.loads(_recv_exact(sock, size))
        if not reply.get("ok"):
            raise WarmServerError(reply.get("error", "refused"))
        return reply

    def hello(self) -> dict[str, Any]:
        """Server facts: pid, python, preload, fingerprint (at start), fingerprint_now,
        startup_env, native_threads, live children."""
        self.info = self.request({"op": "hello"})
        return self.info

    def stale(self) -> bool:
        """True when the Python environment on disk changed since the server started."""
        info = self.hello()
        return info["fingerprint"] != info["fingerprint_now"]

    def alive(self) -> bool:
        try:
            self.hello()
        except (OSError, WarmServerError):
            return False
        return True

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdout_path: str,
        stack_file: str | None = None,
        die_with_caller: bool = True,
        execute: bool = False,
    ) -> WarmChild:
        """Fork a rank running ``argv`` (``[script, args...]`` or ``["--module", name,
        args...]``) with exactly ``env``, in ``cwd``, stdout+stderr appended to
        ``stdout_path`` (relative paths are taken from ``cwd``). ``execute``: the child
        replaces itself with the program ``argv`` names (a fresh interpreter, a parent
        whose starting environment is this server's scrubbed one)."""
        argv = [str(a) for a in argv]
        reply = self.request(
            {
                "op": "spawn",
                "exec": bool(execute),
                "argv": argv,
                "env": {str(k): str(v) for k, v in env.items()},
                "cwd": os.fspath(cwd),
                "stdout_path": os.fspath(stdout_path),
                "stack_file": None if stack_file is None else os.fspath(stack_file),
                "die_with_caller": bool(die_with_caller),
            }
        )
        return WarmChild(self, reply["id"], reply["pid"], argv)

    def children(self) -> list[dict[str, Any]]:
        return self.request({"op": "list"})["children"]

    def stop(self, grace_s: float = 2.0, timeout: float = 30.0) -> None:
        """SIGTERM live children's groups, SIGKILL after ``grace_s``, remove the socket,
        end the server. Quiet when it is already gone."""
        with contextlib.suppress(OSError, WarmServerError):
            self.request({"op": "stop", "grace_s": grace_s}, timeout=grace_s + timeout)
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def connect(socket_path: str, timeout: float = 5.0) -> ServerHandle:
    """Handle on a running server (``WarmServerError`` or ``OSError`` if none answers)."""
    handle = ServerHandle(socket_path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            handle.hello()
            return handle
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def start_server(
    socket_path: str,
    preload: Sequence[str] = ("torch",),
    python: str = sys.executable,
    die_with_parent: bool = True,
    env: Mapping[str, str] | None = None,
    log_path: str | None = None,
    timeout: float = 120.0,
) -> ServerHandle:
    """Start ``python -m gosok.launcher.ranks.warm`` in its own session and return once it
    answers ``hello`` (preload done). Its own output goes to ``log_path`` (default
    ``<socket_path>.log``); ``env`` defaults to ours."""
    socket_path = os.path.abspath(socket_path)
    _check_socket_path(socket_path)
    sock_dir = Path(socket_path).parent
    _private_dir(sock_dir)
    log_path = log_path or f"{socket_path}.log"
    cmd = [python, "-m", MODULE, "--socket", str(socket_path), "--preload", ",".join(preload)]
    if die_with_parent:
        cmd += ["--die-with-parent", "--parent-pid", str(os.getpid())]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=sock_dir,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    handle = ServerHandle(str(socket_path), proc, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise WarmServerError(
                f"warm server exited with {proc.returncode} before serving:\n{_tail(log_path)}"
            )
        with contextlib.suppress(OSError, WarmServerError, ValueError):
            if handle.hello().get("pid") == proc.pid:
                return handle
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise WarmServerError(
                f"warm server did not answer within {timeout} s:\n{_tail(log_path)}"
            )
        time.sleep(0.01)


def _tail(path: str, size: int = 4000) -> str:
    try:
        return Path(path).read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


# ---- server side ------------------------------------------------------------------------


class _Refused(Exception):
    pass


@dataclass
class _Child:
    id: int
    pid: int
    argv: list[str]
    caller: int | None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    returncode: int | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "argv": self.argv,
            "started": self.started,
            "ended": self.ended,
            "returncode": self.returncode,
        }


@dataclass
class _Conn:
    sock: socket.socket
    peer_pid: int
    buf: bytearray = field(default_factory=bytearray)
    waiting_for: int | None = None  # child id of a parked wait
    deadline: float | None = None


class WarmServer:
    """The fork server. ``run()`` preloads, serves until stopped, returns an exit code."""

    def __init__(
        self,
        socket_path: str,
        preload: Sequence[str] = ("torch",),
        die_with_parent: bool = False,
        parent_pid: int | None = None,
    ) -> None:
        self.socket_path = str(socket_path)
        self.preload = tuple(preload)
        self.die_with_parent = die_with_parent
        self.parent_pid = parent_pid
        self.pid = os.getpid()
        self.started = time.time()
        self._fresh_signals: dict[int, Any] = {}
        self._startup_env: dict[str, str] = {}
        self._path: list[str] = []
        self._fingerprint = ""
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None
        self._wake_r = self._wake_w = -1
        self._conns: dict[socket.socket, _Conn] = {}
        self._children: dict[int, _Child] = {}  # by id, live and kept exits
        self._live: dict[int, _Child] = {}  # by pid
        self._callers: dict[int, dict[str, Any]] = {}  # pid -> {"fd": pidfd|None, "ids": set}
        self._next_id = 1
        self._stop_reason: str | None = None
        self._stop_conn: socket.socket | None = None
        self._stop_grace = 2.0

    # -- life cycle

    def run(self) -> int:
        if self.die_with_parent:
            _set_pdeathsig(signal.SIGTERM)
            if os.getppid() != (self.parent_pid or os.getppid()) or os.getppid() == 1:
                _log("parent already gone; not starting")
                return 1
        self._fresh_signals = _signal_dispositions()
        for key in THREAD_ENV_KEYS:
            os.environ.pop(key, None)
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        self._startup_env = {k: os.environ[k] for k in STARTUP_ENV_KEYS if k in os.environ}
        try:
            _check_socket_path(self.socket_path)
            _private_dir(Path(self.socket_path).parent)
        except WarmServerError as exc:
            _log(str(exc))
            return 2
        self._path = list(sys.path[1:])
        self._fingerprint = env_fingerprint(self.preload, self._path)
        code = self._preload()
        if code:
            return code
        gc.collect()
        gc.freeze()
        try:
            self._listen()
        except (OSError, WarmServerError) as exc:
            _log(f"cannot listen on {self.socket_path}: {exc}")
            return 4
        _log(
            f"serving {self.socket_path} (preloaded {', '.join(self.preload) or 'nothing'} "
            f"in {time.time() - self.started:.2f} s)"
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _preload(self) -> int:
        for name in self.preload:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001  (report any import failure, then refuse)
                _log(f"preload of {name!r} failed:\n{traceback.format_exc()}")
                return 2
        if threading.active_count() != 1:
            names = [t.name for t in threading.enumerate()]
            _log(f"refusing to serve: preload started Python threads {names}; fork is unsafe")
            return 3
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            _log("refusing to serve: preload initialised CUDA, which a forked child cannot use")
            return 3
        native = _native_threads()
        if len(native) > 1:
            _log(f"note: {len(native)} native threads after preload: {native}")
        return 0

    def _listen(self) -> None:
        path = self.socket_path
        if os.path.lexists(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(path)
                except OSError:
                    os.unlink(path)  # stale socket of a server that died
                else:
                    raise WarmServerError("another server is already serving it")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        st = os.stat(path)
        self._socket_id = (st.st_dev, st.st_ino)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._stop_reason = self._stop_reason or f"signal {signal.Signals(signum).name}"

    def _loop(self) -> None:
        assert self._sel is not None
        while self._stop_reason is None:
            for key, _mask in self._sel.select(self._select_timeout()):
                key.data(key.fileobj)
            self._reap()
            self._expire_waits()
            self._poll_callers()
        _log(f"stopping: {self._stop_reason}")

    def _select_timeout(self) -> float | None:
        timeouts = [c.deadline - time.monotonic() for c in self._conns.values() if c.deadline]
        if any(entry["fd"] is None for entry in self._callers.values()):
            timeouts.append(CALLER_POLL_S)
        return max(0.0, min(timeouts)) if timeouts else None

    def _shutdown(self) -> None:
        self._close_listener()
        live = list(self._live.values())
        for child in live:
            _signal_child(child, signal.SIGTERM, group=True)
        self._reap_until(time.monotonic() + self._stop_grace)
        for child in list(self._live.values()):
            _signal_child(child, signal.SIGKILL, group=True)
        self._reap_until(time.monotonic() + 10.0)
        if self._stop_conn is not None:
            self._reply(self._stop_conn, {"ok": True, "stopped": [c.pid for c in live]})
        for conn in list(self._conns):
            self._drop(conn)
        for entry in self._callers.values():
            if entry["fd"] is not None:
                with contextlib.suppress(OSError):
                    os.close(entry["fd"])
        _log("stopped")

    def _reap_until(self, deadline: float) -> None:
        self._reap()
        while self._live and time.monotonic() < deadline:
            time.sleep(0.01)
            self._reap()

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        assert self._sel is not None
        self._sel.unregister(self._listener)
        self._listener.close()
        self._listener = None
        with contextlib.suppress(OSError):
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.socket_path)

    # -- connections

    def _on_wake(self, _fd: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _on_accept(self, listener: socket.socket) -> None:
        assert self._sel is not None
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log(f"accept failed: {exc}")
                return
            pid, uid, _gid = _peer(sock)
            if uid != os.getuid():
                _log(f"refused a connection from pid {pid} uid {uid}")
                self._reply(sock, {"ok": False, "error": "peer uid differs from the server's"})
                continue
            sock.setblocking(False)
            self._conns[sock] = _Conn(sock, pid)
            self._sel.register(sock, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self, sock: socket.socket) -> None:
        conn = self._conns.get(sock)
        if conn is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or conn.waiting_for is not None:  # gone, or talking out of turn
            self._drop(sock)
            return
        conn.buf += data
        if len(conn.buf) < _HEADER.size:
            return
        (size,) = _HEADER.unpack_from(conn.buf)
        if size > MAX_MESSAGE_BYTES:
            self._finish_conn(sock, {"ok": False, "error": "message too large"})
            return
        if len(conn.buf) < _HEADER.size + size:
            return
        try:
            message = json.loads(conn.buf[_HEADER.size : _HEADER.size + size])
            if not isinstance(message, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            self._finish_conn(sock, {"ok": False, "error": f"bad request: {exc}"})
            return
        reply = self._handle(conn, message)
        if reply is not None:
            self._finish_conn(sock, reply)

    def _handle(self, conn: _Conn, message: dict[str, Any]) -> dict[str, Any] | None:
        """The reply, or None when the request is parked (wait, stop)."""
        op = message.get("op")
        try:
            if op == "hello":
                return {"ok": True, **self._hello()}
            if op == "spawn":
                return {"ok": True, **self._spawn(message, conn.peer_pid)}
            if op == "poll":
                return {"ok": True, "returncode": self._child(message).returncode}
            if op == "wait":
                return self._wait(conn, message)
            if op == "signal":
                child = self._child(message)
                sent = _signal_child(child, int(message["sig"]), bool(message.get("group")))
                return {"ok": True, "sent": sent}
            if op == "list":
                return {"ok": True, "children": [c.public() for c in self._children.values()]}
            if op == "stop":
                self._stop_grace = float(message.get("grace_s", 2.0))
                self._stop_reason = "stop request"
                self._stop_conn = conn.sock
                conn.waiting_for = -1
                return None
            raise _Refused(f"unknown op {op!r}")
        except _Refused as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001  (a bad request must not end the server)
            _log(f"{op} failed:\n{traceback.format_exc()}")
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _finish_conn(self, sock: socket.socket, reply: dict[str, Any]) -> None:
        self._unregister(sock)
        self._conns.pop(sock, None)
        self._reply(sock, reply)

    def _reply(self, sock: socket.socket, reply: dict[str, Any]) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(5.0)
            sock.sendall(_frame(reply))
        except (OSError, WarmServerError) as exc:
            _log(f"could not reply: {exc}")
        finally:
            sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._unregister(sock)
        self._conns.pop(sock, None)
        sock.close()

    # -- requests

    def _hello(self) -> dict[str, Any]:
        return {
            "proto": PROTOCOL,
            "pid": self.pid,
            "uid": os.getuid(),
            "python": sys.executable,
            "version": sys.version,
            "preload": list(self.preload),
            "fingerprint": self._fingerprint,
            "fingerprint_now": env_fingerprint(self.preload, self._path),
            "startup_env": self._startup_env,
            "native_threads": len(_native_threads()),
            "live": len(self._live),
            "started": self.started,
            "socket": self.socket_path,
        }

    def _child(self, message: dict[str, Any]) -> _Child:
        self._reap()
        child = self._children.get(message.get("id"))  # type: ignore[arg-type]
        if child is None:
            raise _Refused(f"no child with id {message.get('id')!r} (unknown or forgotten)")
        return child

    def _wait(self, conn: _Conn, message: dict[str, Any]) -> dict[str, Any] | None:
        child = self._child(message)
        timeout = message.get("timeout")
        if child.returncode is not None or (timeout is not None and timeout <= 0):
            return {"ok": True, "returncode": child.returncode}
        conn.waiting_for = child.id
        conn.deadline = None if timeout is None else time.monotonic() + float(timeout)
        return None

    def _expire_waits(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline and c.deadline <= now]:
            self._finish_conn(conn.sock, {"ok": True, "returncode": None})

    def _spawn(self, message: dict[str, Any], peer_pid: int) -> dict[str, Any]:
        argv, env, cwd = message.get("argv"), message.get("env"), message.get("cwd")
        stdout_path, stack_file = message.get("stdout_path"), message.get("stack_file")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise _Refused("argv must be a non-empty list of strings")
        if argv[0] == "--module" and len(argv) < 2:
            raise _Refused("argv ['--module'] needs a module name")
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise _Refused("env must map names to strings")
        if not isinstance(cwd, str) or not os.path.isdir(cwd):
            raise _Refused(f"cwd is not a directory: {cwd!r}")
        if not isinstance(stdout_path, str) or not stdout_path:
            raise _Refused("stdout_path is required")
        if stack_file is not None and not isinstance(stack_file, str):
            raise _Refused("stack_file must be a path or null")
        execute = bool(message.get("exec"))
        differ = [k for k in STARTUP_ENV_KEYS if env.get(k) != self._startup_env.get(k)]
        if differ and not execute:
            raise _Refused(
                f"env differs from the warm server's in {', '.join(differ)}, which are fixed "
                "when an interpreter starts; start this rank cold or restart the server"
            )
        try:
            out_fd = os.open(
                os.path.join(cwd, stdout_path),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o666,
            )
        except OSError as exc:
            raise _Refused(f"cannot open stdout_path: {exc}") from exc
        caller = peer_pid if message.get("die_with_caller", True) else None
        try:
            if caller is not None:
                self._watch_caller(caller)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            # Signals stay blocked until the child has its fresh dispositions, so a SIGTERM
            # sent right after spawn is not swallowed by the server's handler in the child.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: native threads
                try:
                    pid = os.fork()
                except OSError as exc:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    if caller is not None and not self._callers[caller]["ids"]:
                        self._forget_caller(caller)
                    raise _Refused(f"fork failed: {exc}") from exc
            if pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if pid == 0:
                try:
                    self._become_child(out_fd, argv, env, cwd, stack_file, execute)
                finally:
                    os._exit(1)  # backstop: _become_child always exits by itself
        finally:
            os.close(out_fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        child = _Child(self._next_id, pid, argv, caller)
        self._next_id += 1
        self._children[child.id] = child
        self._live[pid] = child
        if caller is not None:
            self._callers[caller]["ids"].add(child.id)
        return {"id": child.id, "pid": pid}

    # -- children

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self._live.pop(pid, None)
            if child is not None:
                child.returncode = os.waitstatus_to_exitcode(status)
                child.ended = time.time()
                self._child_ended(child)

    def _child_ended(self, child: _Child) -> None:
        for conn in [c for c in self._conns.values() if c.waiting_for == child.id]:
            self._finish_conn(conn.sock, {"ok": True, "returncode": child.returncode})
        if child.caller is not None:
            self._release_caller(child.caller, child.id)
        ended = [c for c in self._children.values() if c.returncode is not None]
        for old in ended[: max(0, len(ended) - KEPT_EXITS)]:
            del self._children[old.id]

    def _watch_caller(self, pid: int) -> None:
        if pid in self._callers:
            return
        fd = None
        with contextlib.suppress(AttributeError, OSError):
            fd = os.pidfd_open(pid)
        if fd is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError as exc:
                raise _Refused(f"caller {pid} is gone") from exc
        self._callers[pid] = {"fd": fd, "ids": set()}
        if fd is not None and self._sel is not None:
            self._sel.register(fd, selectors.EVENT_READ, lambda _fd, pid=pid: self._gone(pid))

    def _release_caller(self, pid: int, child_id: int) -> None:
        entry = self._callers.get(pid)
        if entry is None:
            return
        entry["ids"].discard(child_id)
        if not entry["ids"]:
            self._forget_caller(pid)

    def _forget_caller(self, pid: int) -> None:
        entry = self._callers.pop(pid, None)
        if entry and entry["fd"] is not None:
            self._unregister(entry["fd"])
            os.close(entry["fd"])

    def _poll_callers(self) -> None:
        for pid, entry in list(self._callers.items()):
            if entry["fd"] is None:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    self._gone(pid)
                except PermissionError:
                    pass

    def _gone(self, caller: int) -> None:
        entry = self._callers.get(caller)
        if entry is None:
            return
        for child_id in sorted(entry["ids"]):
            child = self._children.get(child_id)
            if child is not None and child.returncode is None:
                _log(f"caller {caller} is gone: killing child {child.pid}")
                _signal_child(child, signal.SIGKILL, group=True)
        self._forget_caller(caller)

    # -- in the forked child

    def _become_child(
        self,
        out_fd: int,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        stack: str | None,
        execute: bool = False,
    ) -> None:
        try:
            os.setpgid(0, 0)
            _set_pdeathsig(signal.SIGKILL)
            if os.getppid() != self.pid:  # the server died before prctl took effect
                os._exit(137)
            self._close_server_fds()
            _restore_signals(self._fresh_signals)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(out_fd)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            if execute:
                os.execve(argv[0], argv, env)
        except OSError as exc:
            with contextlib.suppress(Exception):
                os.write(2, f"cannot start {argv[0]}: {exc}\n".encode())
            os._exit(127)
        except BaseException:  # noqa: BLE001
            with contextlib.suppress(Exception):
                os.write(2, traceback.format_exc().encode())
            os._exit(1)
        os._exit(_run_main(argv, stack))

    def _close_server_fds(self) -> None:
        signal.set_wakeup_fd(-1)
        if self._sel is not None:
            self._sel.close()  # closes the epoll fd only: the server's registrations stay
        for sock in [self._listener, *self._conns]:
            if sock is not None:
                sock.close()
        for fd in [self._wake_r, self._wake_w]:
            with contextlib.suppress(OSError):
                os.close(fd)
        for entry in self._callers.values():
            if entry["fd"] is not None:
                with contextlib.suppress(OSError):
                    os.close(entry["fd"])


def _signal_child(child: _Child, sig: int, group: bool) -> bool:
    """Signal a child not yet reaped (so its pid cannot have been reused)."""
    if child.returncode is not None:
        return False
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
            if os.getpgid(child.pid) == child.pid:
                return True  # the child was in its group: signalled with it
    try:
        os.kill(child.pid, sig)  # not a group leader any more (setsid/setpgid), or not group
    except ProcessLookupError:
        return False
    return True


def _signal_dispositions() -> dict[int, Any]:
    found = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(sig)
            if handler is not None:
                found[sig] = handler
    return found


def _restore_signals(dispositions: Mapping[int, Any]) -> None:
    for sig, handler in dispositions.items():
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _fresh_stdio(env: Mapping[str, str]) -> None:
    """New sys.stdin/stdout/stderr over fds 0-2 as a fresh interpreter would build them."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    encoding, _, errors = env.get("PYTHONIOENCODING", "").partition(":")
    base = sys.__stdout__ or sys.stdout
    encoding = encoding or getattr(base, "encoding", None) or "utf-8"
    out_errors = errors or getattr(base, "errors", None) or "strict"

    def make(fd: int, name: str, write: bool, errors: str, line_buffering: bool) -> Any:
        raw = io.FileIO(fd, "w" if write else "r", closefd=False)
        with contextlib.suppress(AttributeError):
            raw.name = name
        buffered: Any = raw
        if not (write and unbuffered):
            buffered = io.BufferedWriter(raw) if write else io.BufferedReader(raw)
        return io.TextIOWrapper(
            buffered,
            encoding=encoding,
            errors=errors,
            line_buffering=line_buffering or raw.isatty(),
            write_through=write and unbuffered,
        )

    sys.stdin = sys.__stdin__ = make(0, "<stdin>", False, out_errors, False)
    sys.stdout = sys.__stdout__ = make(1, "<stdout>", True, out_errors, False)
    sys.stderr = sys.__stderr__ = make(2, "<stderr>", True, errors or "backslashreplace", True)


def _child_runtime(env: Mapping[str, str], stack_file: str | None) -> None:
    stack_file = stack_file or env.get("GOSOK_STACK_FILE")
    if stack_file:
        handle = open(stack_file, "a")  # noqa: SIM115  (kept open for the life of the child)
        faulthandler.register(signal.SIGUSR1, file=handle, all_threads=True)
    if env.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    threads = next((env[k] for k in THREAD_ENV_KEYS if env.get(k)), None)
    torch = sys.modules.get("torch")
    if threads and torch is not None:
        with contextlib.suppress(ValueError, RuntimeError, AttributeError):
            if int(threads) > 0:
                torch.set_num_threads(int(threads))
    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        with contextlib.suppress(Exception):
            numpy_random.seed()
    if env.get(PROFILE_ENV):
        mark(env[PROFILE_ENV], "start", warm=True)
        arm_profile(env[PROFILE_ENV], warm=True)
    with contextlib.suppress(ImportError):  # the one gosok module a child loads
        from gosok.launcher.ranks import progress

        progress.install(env)


def _run_main(argv: list[str], stack_file: str | None) -> int:
    """Run the script as ``__main__`` and finish like an interpreter; returns the status
    for ``os._exit`` (never raises)."""
    code: int = 1
    interrupted = False
    try:
        _fresh_stdio(os.environ)
        _child_runtime(os.environ, stack_file)
        if argv[0] == "--module":
            module = argv[1]
            sys.argv = [module, *argv[2:]]
            sys.path[0] = os.getcwd()
            # A preloaded copy (its imports are what the preload was for) must not be in
            # sys.modules when it runs as __main__: a fresh `python -m` has none.
            sys.modules.pop(module, None)
            try:
                found = importlib.util.find_spec(module) is not None
            except ImportError:
                found = False
            if not found:
                print(f"{sys.executable}: No module named {module}", file=sys.stderr)
                return _finalize(1)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            script = argv[0]
            if not os.path.exists(script):
                print(
                    f"{sys.executable}: can't open file {os.path.abspath(script)!r}: "
                    "[Errno 2] No such file or directory",
                    file=sys.stderr,
                )
                return _finalize(2)
            sys.argv = list(argv)
            sys.path[0] = str(Path(script).resolve().parent)
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _system_exit_code(exc.code)
    except KeyboardInterrupt:
        _excepthook()
        interrupted = True
    except BaseException:  # noqa: BLE001  (what the interpreter would print, then 1)
        _excepthook()
        code = 1
    return _finalize(code, interrupted)


def _system_exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    with contextlib.suppress(Exception):
        print(value, file=sys.stderr)
    return 1


def _excepthook() -> None:
    try:
        sys.excepthook(*sys.exc_info())
    except BaseException:  # noqa: BLE001
        with contextlib.suppress(Exception):
            traceback.print_exc()


def _finalize(code: int, interrupted: bool = False) -> int:
    """Interpreter shutdown: join non-daemon threads, run atexit, flush."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            code = 120 if code == 0 else code
    if interrupted:  # an uncaught KeyboardInterrupt ends an interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    return code & 0xFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="gosok warm rank (fork) server"
    )
    parser.add_argument("--socket", required=True, help="Unix socket path (dir must be 0700)")
    parser.add_argument(
        "--preload", default="torch", help="comma-separated modules to import ('' for none)"
    )
    parser.add_argument(
        "--die-with-parent", action="store_true", help="stop when the parent thread exits"
    )
    parser.add_argument("--parent-pid", type=int, help="pid expected as parent (race check)")
    args = parser.parse_args(argv)
    preload = tuple(name.strip() for name in args.preload.split(",") if name.strip())
    server = WarmServer(args.socket, preload, args.die_with_parent, args.parent_pid)
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
