"""What a rank forked from a node's zygote (``zygote.py``) runs, so that it sees what a
fresh ``python -m ...script_runner argv...`` would give it: ``sys.argv``, ``sys.path[0]``
(script dir, or cwd for ``--module``), ``__name__ == "__main__"``, cwd, ``os.environ``
replaced by the request's *complete* env (C-level environ too, so torch and NCCL read
RANK/MASTER_ADDR...), stdin from /dev/null, stdout and stderr appended to the rank's log
with fresh ``sys.std*`` objects (PYTHONUNBUFFERED and PYTHONIOENCODING honoured), the
interpreter's start-up signal dispositions, a faulthandler stack dump on SIGUSR1 (env
GOSOK_STACK_FILE), Python's ``random`` (and numpy's global RNG, if loaded) re-seeded from
the OS, torch's intra-op thread count from OMP_NUM_THREADS/MKL_NUM_THREADS. Its exit
status is a fresh interpreter's: 0; the SystemExit code (None -> 0, other non-int ->
printed, 1); 1 after ``sys.excepthook`` for an uncaught exception; death by SIGINT after
an uncaught KeyboardInterrupt; 2 for a missing script. Non-daemon threads are joined and
atexit handlers run before ``os._exit``; a child never returns into the zygote's loop. A
``--module`` that was preloaded is dropped from ``sys.modules`` before it runs as
``__main__``, as ``python -m`` finds it.

Also here, because fresh ranks use them too: start-up profile marks (``mark``,
``arm_profile``) and ``env_fingerprint`` (has the Python environment on disk changed since
a zygote imported it?).

stdlib only: nothing from gosok is imported at module level, so a zygote's import of it is
cheap; a child loads ``progress.py`` (stdlib only) to watch itself.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import faulthandler
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
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
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
CHANNEL_ENV = "GOSOK_CALL_FD"  # a channel the child inherited (a benchmark's rank)
_HEADER = struct.Struct("!Q")


def send_message(sock: socket.socket, body: bytes, fds: Sequence[int] = ()) -> None:
    """One length-prefixed message (``fds`` passed along with it)."""
    frame = _HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
    sock.sendall(frame[sent:])


def read_message(
    sock: socket.socket, fds: list[int] | None = None, limit: int | None = None
) -> bytes | None:
    """One message, or None at the end of the stream; with ``fds``, file descriptors sent
    with it are appended there; one over ``limit`` bytes raises ``ValueError``."""
    header = b""
    if fds is not None:  # ancillary data rides on the message's first byte
        header, passed, _flags, _addr = socket.recv_fds(sock, _HEADER.size, 1)
        fds.extend(passed)
        if not header:
            return None
    rest = _recv_exact(sock, _HEADER.size - len(header))
    if rest is None:
        return None
    (size,) = _HEADER.unpack(header + rest)
    if limit is not None and size > limit:
        raise ValueError(f"message of {size} bytes is over {limit}")
    return _recv_exact(sock, size)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


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


def set_pdeathsig(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def become_rank(
    zygote_pid: int,
    close_fds: Iterable[int],
    out_fd: int,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    start_signals: Mapping[int, Any],
    execute: bool = False,
) -> None:
    """In the child just forked from the zygote: leave the zygote behind and run ``argv``
    (or execute it, with ``execute``) as the rank. Never returns."""
    try:
        os.setpgid(0, 0)
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before prctl took effect
            os._exit(137)
        signal.set_wakeup_fd(-1)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        restore_signals(start_signals)
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
    os._exit(_run_main(argv))


def signal_dispositions() -> dict[int, Any]:
    found = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(sig)
            if handler is not None:
                found[sig] = handler
    return found


def restore_signals(dispositions: Mapping[int, Any]) -> None:
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


def _child_runtime(env: Mapping[str, str]) -> None:
    stack_file = env.get("GOSOK_STACK_FILE")
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


def _run_main(argv: list[str]) -> int:
    """Run the script as ``__main__`` and finish like an interpreter; returns the status
    for ``os._exit`` (never raises)."""
    code: int = 1
    interrupted = False
    try:
        _fresh_stdio(os.environ)
        _child_runtime(os.environ)
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
