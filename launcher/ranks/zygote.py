"""A node agent's fork server ("zygote"): an interpreter that imports torch (and whatever
else is named) once, then forks each rank from that warm state, so a rank starts in
milliseconds instead of paying interpreter start-up plus ``import torch`` every time.

The agent (``Zygote.start``; ``spawn`` gives a Popen-like ``ZygoteChild``; ``stop``) talks
to its zygote over a socketpair the zygote inherits (``--fd``): no path, no listening
socket, nobody else can connect. Requests go one way (``spawn``, ``signal``, ``hello``,
``stop``), each answered in turn; the zygote pushes ``exit`` events as it reaps its
children, so nobody polls for an exit. ``argv`` is ``[script, args...]`` or
``["--module", name, args...]``; with ``execute`` it is a program the child executes
(fresh ranks whose parent started from the scrubbed environment). What a child sees is
in ``forked.py``.

Lifetimes: when the agent's end closes (the agent ended, or died), the zygote SIGTERMs its
children's process groups, SIGKILLs them after a grace, and exits; a child also dies with
the zygote (PR_SET_PDEATHSIG=SIGKILL). Each child leads its own process group, so
``terminate``/``kill`` reach its dataloader workers; ``send_signal`` reaches the rank
only unless ``group``. Signals go through the zygote, which signals only children it has
not reaped (a recycled pid is never hit).

The zygote starts no thread; after the preload it refuses to serve when a Python thread
is running or torch initialised CUDA (PYTORCH_NVML_BASED_CUDA_CHECK=1 keeps availability
checks from doing so). Interpreter start-up settings (``forked.STARTUP_ENV_KEYS``) cannot
change after start: a warm spawn whose env differs in them is refused. Messages are
4-byte length-prefixed JSON: data, never code. ``gc.freeze()`` after the preload keeps the
preloaded heap shared copy-on-write.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gosok.launcher.ranks import forked

MODULE = "gosok.launcher.ranks.zygote"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ZygoteError(RuntimeError):
    """The zygote refused a request, or could not be started or reached."""


def _send_json(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    body = json.dumps(message).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ZygoteError(f"message of {len(body)} bytes is over {MAX_MESSAGE_BYTES}")
    forked.send_message(sock, body, fds)


def _read_json(sock: socket.socket, fds: list[int] | None = None) -> dict[str, Any] | None:
    body = forked.read_message(sock, fds, MAX_MESSAGE_BYTES)
    message = None if body is None else json.loads(body)
    if body is not None and not isinstance(message, dict):
        raise ZygoteError("a message is a JSON object")
    return message


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"[gosok-zygote {os.getpid()} {stamp}] {message}", file=sys.stderr, flush=True)


def _tail(path: str | None, size: int = 4000) -> str:
    try:
        return Path(path or "").read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


# ---- the agent's side ---------------------------------------------------------------------


class ZygoteChild:
    """A rank forked by the zygote; Popen-like. Its exit arrives as an event from the
    zygote; ``returncode`` is negative (-N) when signal N ended it."""

    def __init__(self, zygote: Zygote, child_id: int, pid: int, args: list[str]) -> None:
        self.zygote = zygote
        self.id = child_id
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self.ended = threading.Event()

    def _end(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self.ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child ends; ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        if not self.ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int, group: bool = False) -> bool:
        """Signal the child (its process group with ``group``); False once it has ended."""
        if self.returncode is not None:
            return False
        try:
            reply = self.zygote.request({"op": "signal", "id": self.id, "sig": int(sig),
                                         "group": bool(group)})  # fmt: skip
        except ZygoteError:
            return False
        return bool(reply["sent"])

    def terminate(self) -> bool:
        return self.send_signal(signal.SIGTERM, group=True)

    def kill(self) -> bool:
        return self.send_signal(signal.SIGKILL, group=True)


class Zygote:
    """The agent's end of one zygote. Thread-safe: requests are sent and answered in turn
    under a lock; one reader thread takes replies and exit events."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen, log_path: str | None):
        self.sock = sock
        self.proc = proc
        self.log_path = log_path
        self.info: dict[str, Any] = {}
        self.gone = ""  # why it ended, once it has
        self._lock = threading.Lock()  # one request at a time
        self._replies: list[dict[str, Any]] = []
        self._replied = threading.Condition()
        self._children: dict[int, ZygoteChild] = {}
        self._early_exits: dict[int, int] = {}  # exits read before spawn's reply
        self._on_exit: dict[int, Callable[[], None]] = {}

    @classmethod
    def start(
        cls,
        preload: Sequence[str] = ("torch",),
        env: Mapping[str, str] | None = None,
        log_path: str | None = None,
        python: str = sys.executable,
        timeout: float = 300.0,
    ) -> Zygote:
        """Start a zygote and return once its preload is done (``ZygoteError`` with the
        end of its log when it fails). Its own output goes to ``log_path``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [python, "-m", MODULE, "--fd", str(theirs.fileno()), "--preload", ",".join(preload)]
        try:
            with open(log_path or os.devnull, "ab") as log:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=None if env is None else dict(env), pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )  # fmt: skip
        except OSError as err:
            ours.close()
            raise ZygoteError(f"the zygote could not be started: {err}") from err
        finally:
            theirs.close()
        zygote = cls(ours, proc, log_path)
        ours.settimeout(timeout)
        try:
            ready = _read_json(ours)
        except (OSError, ValueError, ZygoteError):
            ready = None
        if ready is None or ready.get("event") != "ready":
            zygote.stop(grace_s=0.0)
            code = proc.poll()
            said = "did not get ready" if code is None else f"exited with {code}"
            raise ZygoteError(f"the zygote {said} before serving:\n{_tail(log_path)}")
        ours.settimeout(None)
        zygote.info = ready
        threading.Thread(target=zygote._read, name="gosok-zygote-read", daemon=True).start()
        return zygote

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.gone

    def request(
        self, message: Mapping[str, Any], timeout: float = 30.0, fds: Sequence[int] = ()
    ) -> dict[str, Any]:
        """Send one request (with ``fds`` passed along) and return its reply; a refusal
        raises ``ZygoteError`` with the zygote's reason."""
        with self._lock:
            if self.gone:
                raise ZygoteError(f"the zygote is gone ({self.gone})")
            try:
                _send_json(self.sock, message, fds)
            except OSError as err:
                raise ZygoteError(f"the zygote is gone ({err})") from err
            deadline = time.monotonic() + timeout
            with self._replied:
                while not self._replies:
                    left = deadline - time.monotonic()
                    if not self.gone and left <= 0:
                        # A late reply would answer the next request: this zygote is done.
                        self.gone = f"no reply in {timeout:g} s"
                        self.proc.kill()
                    if self.gone:
                        raise ZygoteError(f"no reply from the zygote ({self.gone})")
                    self._replied.wait(left)
                reply = self._replies.pop(0)
        if not reply.get("ok"):
            raise ZygoteError(reply.get("error", "refused"))
        return reply

    def hello(self) -> dict[str, Any]:
        """Facts: pid, python, preload, fingerprint (at start), fingerprint_now,
        startup_env, live children."""
        return self.request({"op": "hello"})

    def stale(self) -> bool:
        """True when the Python environment on disk changed since the zygote started."""
        info = self.hello()
        return info["fingerprint"] != info["fingerprint_now"]

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdout_path: str,
        execute: bool = False,
        on_exit: Callable[[], None] | None = None,
        channel: int | None = None,
    ) -> ZygoteChild:
        """Fork a rank running ``argv`` with exactly ``env``, in ``cwd``, stdout and stderr
        appended to ``stdout_path``; ``on_exit`` is called (from the reader thread) when it
        has ended. ``channel``: a descriptor the rank inherits (its number in env
        ``forked.CHANNEL_ENV``)."""
        argv = [str(a) for a in argv]
        reply = self.request({
            "op": "spawn", "exec": bool(execute), "argv": argv,
            "env": {str(k): str(v) for k, v in env.items()}, "cwd": os.fspath(cwd),
            "stdout_path": os.fspath(stdout_path),
        }, fds=() if channel is None else (channel,))  # fmt: skip
        child = ZygoteChild(self, reply["id"], reply["pid"], argv)
        with self._replied:
            self._children[child.id] = child
            if on_exit is not None:
                self._on_exit[child.id] = on_exit
            early = self._early_exits.pop(child.id, None)
            if early is None and self.gone:  # the zygote went, and the child with it
                early = -signal.SIGKILL
        if early is not None:
            self._ended(child.id, early)
        return child

    def stop(self, grace_s: float = 2.0, timeout: float = 30.0) -> None:
        """End the zygote: its children get SIGTERM, SIGKILL after ``grace_s``. Quiet when
        it is already gone."""
        if self._lock.acquire(timeout=5.0):  # not in the middle of another request's frame
            try:
                with contextlib.suppress(OSError):
                    _send_json(self.sock, {"op": "stop", "grace_s": grace_s})
            finally:
                self._lock.release()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(grace_s + timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _read(self) -> None:
        why = "its channel closed"
        try:
            while True:
                message = _read_json(self.sock)
                if message is None:
                    break
                if message.get("event") == "exit":
                    self._ended(int(message["id"]), int(message["returncode"]))
                    continue
                with self._replied:
                    self._replies.append(message)
                    self._replied.notify_all()
        except (OSError, ValueError, ZygoteError) as err:
            why = f"{type(err).__name__}: {err}"
        with self._replied:
            self.gone = self.gone or why
            self._replied.notify_all()
            live = [c for c in self._children.values() if c.returncode is None]
        for child in live:  # they died with it (PR_SET_PDEATHSIG)
            self._ended(child.id, -signal.SIGKILL)

    def _ended(self, child_id: int, returncode: int) -> None:
        with self._replied:
            child = self._children.pop(child_id, None)
            if child is None:
                self._early_exits[child_id] = returncode
                return
            callback = self._on_exit.pop(child_id, None)
        child._end(returncode)
        if callback is not None:
            with contextlib.suppress(Exception):
                callback()


# ---- the zygote's side --------------------------------------------------------------------


class _Refused(Exception):
    pass


class ZygoteServer:
    """``run()`` preloads, serves its one channel until it closes, returns an exit code."""

    def __init__(self, fd: int, preload: Sequence[str]) -> None:
        self.sock = socket.socket(fileno=fd)
        self.preload = tuple(preload)
        self.pid = os.getpid()
        self.started = time.time()
        self._start_signals: dict[int, Any] = {}
        self._startup_env: dict[str, str] = {}
        self._path: list[str] = []
        self._fingerprint = ""
        self._wake_r = self._wake_w = -1
        self._live: dict[int, int] = {}  # pid -> child id
        self._next_id = 1
        self._stop: str | None = None
        self._grace = 2.0

    def run(self) -> int:
        self._start_signals = forked.signal_dispositions()
        for key in forked.THREAD_ENV_KEYS:
            os.environ.pop(key, None)
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        self._startup_env = {k: os.environ[k] for k in forked.STARTUP_ENV_KEYS if k in os.environ}
        self._path = list(sys.path[1:])
        self._fingerprint = forked.env_fingerprint(self.preload, self._path)
        code = self._preload()
        if code:
            return code
        gc.collect()
        gc.freeze()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        self._send({"event": "ready", **self._hello()})
        _log(f"serving (preloaded {', '.join(self.preload) or 'nothing'} "
             f"in {time.time() - self.started:.2f} s)")  # fmt: skip
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
        cuda = getattr(sys.modules.get("torch"), "cuda", None)
        if cuda is not None and cuda.is_initialized():
            _log("refusing to serve: preload initialised CUDA, which a forked child cannot use")
            return 3
        return 0

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._stop = self._stop or f"signal {signal.Signals(signum).name}"

    def _send(self, message: Mapping[str, Any]) -> None:
        try:
            _send_json(self.sock, message)
        except OSError as err:
            self._stop = self._stop or f"the agent's end closed ({err})"

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while self._stop is None:
                for key, _mask in sel.select():
                    if key.fileobj is self.sock:
                        self._on_request()
                    else:
                        with contextlib.suppress(OSError):
                            while os.read(self._wake_r, 4096):
                                pass
                self._reap()
        _log(f"stopping: {self._stop}")

    def _on_request(self) -> None:
        fds: list[int] = []
        try:
            message = _read_json(self.sock, fds)
        except (OSError, ValueError, ZygoteError) as err:
            self._stop = f"a bad message ({err})"
            message = None
        try:
            self._serve(message, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _serve(self, message: dict[str, Any] | None, fds: list[int]) -> None:
        if self._stop:
            return
        if message is None:
            self._stop = "the agent's end closed"
            return
        op = message.get("op")
        try:
            if op == "hello":
                reply: dict[str, Any] = self._hello()
            elif op == "spawn":
                reply = self._spawn(message, fds[0] if fds else None)
            elif op == "signal":
                reply = {"sent": self._signal(message)}
            elif op == "stop":
                self._grace = float(message.get("grace_s", 2.0))
                self._stop = "stop request"
                return
            else:
                raise _Refused(f"unknown op {op!r}")
            self._send({"ok": True, **reply})
        except _Refused as exc:
            self._send({"ok": False, "error": str(exc)})
        except Exception as exc:  # noqa: BLE001  (a bad request must not end the zygote)
            _log(f"{op} failed:\n{traceback.format_exc()}")
            self._send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def _hello(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "python": sys.executable,
            "preload": list(self.preload),
            "fingerprint": self._fingerprint,
            "fingerprint_now": forked.env_fingerprint(self.preload, self._path),
            "startup_env": self._startup_env,
            "live": len(self._live),
            "started": self.started,
        }

    def _signal(self, message: dict[str, Any]) -> bool:
        self._reap()
        pid = next((p for p, i in self._live.items() if i == message.get("id")), None)
        if pid is None:
            return False
        return _signal_pid(pid, int(message["sig"]), bool(message.get("group")))

    def _spawn(self, message: dict[str, Any], channel: int | None) -> dict[str, Any]:
        argv, env, cwd = message.get("argv"), message.get("env"), message.get("cwd")
        stdout_path = message.get("stdout_path")
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
        execute = bool(message.get("exec"))
        if channel is not None:
            env = {**env, forked.CHANNEL_ENV: str(channel)}
            os.set_inheritable(channel, execute)  # through execve; closed here once forked
        differ = [k for k in forked.STARTUP_ENV_KEYS if env.get(k) != self._startup_env.get(k)]
        if differ and not execute:
            raise _Refused(
                f"env differs from the zygote's in {', '.join(differ)}, which are fixed when "
                "an interpreter starts; start this rank fresh"
            )
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            out_fd = os.open(os.path.join(cwd, stdout_path), flags, 0o666)
        except OSError as exc:
            raise _Refused(f"cannot open stdout_path: {exc}") from exc
        try:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            # Signals stay blocked until the child has its start-up dispositions, so a
            # SIGTERM sent right after spawn is not swallowed by a copy of our handler.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: native threads
                try:
                    pid = os.fork()
                except OSError as exc:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    raise _Refused(f"fork failed: {exc}") from exc
            if pid == 0:
                try:
                    fds = (self.sock.fileno(), self._wake_r, self._wake_w)
                    forked.become_rank(self.pid, fds, out_fd, argv, env, cwd,
                                       self._start_signals, execute)  # fmt: skip
                finally:
                    os._exit(1)  # backstop: become_rank always exits by itself
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:
            os.close(out_fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        child_id = self._next_id
        self._next_id += 1
        self._live[pid] = child_id
        return {"id": child_id, "pid": pid}

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
            child_id = self._live.pop(pid, None)
            if child_id is not None:
                code = os.waitstatus_to_exitcode(status)
                self._send({"event": "exit", "id": child_id, "returncode": code})

    def _shutdown(self) -> None:
        for pid in list(self._live):
            _signal_pid(pid, signal.SIGTERM, group=True)
        deadline = time.monotonic() + self._grace
        while self._live and time.monotonic() < deadline:
            time.sleep(0.01)
            self._reap()
        for pid in list(self._live):
            _signal_pid(pid, signal.SIGKILL, group=True)
        deadline = time.monotonic() + 10.0
        while self._live and time.monotonic() < deadline:
            time.sleep(0.01)
            self._reap()
        _log("stopped")


def _signal_pid(pid: int, sig: int, group: bool) -> bool:
    """Signal a child not yet reaped (so its pid cannot have been reused)."""
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
            if os.getpgid(pid) == pid:
                return True  # the child was in its group: signalled with it
    try:
        os.kill(pid, sig)  # not a group leader any more (setsid/setpgid), or not group
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="gosok zygote")
    parser.add_argument("--fd", type=int, required=True, help="the inherited channel")
    parser.add_argument("--preload", default="torch", help="comma-separated modules")
    args = parser.parse_args(argv)
    preload = tuple(name.strip() for name in args.preload.split(",") if name.strip())
    return ZygoteServer(args.fd, preload).run()


if __name__ == "__main__":
    sys.exit(main())
