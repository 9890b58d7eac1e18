"""Writing to a ledger that may be away: in order, on one thread, never failing the job.

Use::

    writer = LedgerWriter(cfg.ledger.path, say=print)
    start = writer.op("start_job", job_id="run-17", project="llm", gpus=32)
    writer.op("record_attempt", job=start, attempt=0, started_unix=t)
    writer.close()                       # waits for the writes (CLOSE_TIMEOUT_S at most)
    writer.result(start)                 # the job id the ledger gave, once applied

Each write is an op (``{"id", "method", "kwargs", "job"}``, see ``Ledger.apply``), applied
exactly once however often it is sent. When the ledger cannot be reached (a server down, a
network blip, a locked file) the writer says so once, appends what it holds to a buffer on
local disk (``spool_dir()``, this user's only, one fsynced JSON line per op) and retries
with backoff; once the ledger answers it sends the buffer, in order, and removes it. If the
ledger is still away when the writer closes, the buffer stays for ``gosok ledger push``.
A write the ledger refuses for another reason (a bug, a constraint) is dropped with one
line printed: a ledger never fails a job. If ``close()`` runs out of time while a write
still blocks (a server that stopped answering mid-query), what is left is put in a buffer
from the caller's thread, so nothing is dropped unsaid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .backends import default_ledger_path, is_transient, resolve_ledger_path
from .db import Ledger

CLOSE_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 10.0
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 5.0
_CLOSE = object()


def print_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spool_dir() -> Path:
    """Where writers keep what the ledger has not taken yet: 0700, checked on every use."""
    from gosok.launcher.ranks.private import own_dir

    return own_dir(default_ledger_path().parent / "spool")


def ledger_target(path: str | None) -> str:
    """The ledger ``path`` names, as a buffer records it: a URL, or an absolute file path
    (``gosok ledger push`` may run from another directory)."""
    target = resolve_ledger_path(path)
    return str(target.resolve()) if isinstance(target, Path) else str(target)


class Spool:
    """One writer's buffer: a header line naming the ledger, then one op per line. The
    writer holds an exclusive lock on it, so ``push`` leaves a live writer's buffer alone."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, ledger: str) -> Spool:
        path = spool_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        spool = cls(path, fd)
        spool._write([{"ledger": ledger, "created_unix": time.time()}])
        return spool

    def _write(self, lines: list[Mapping[str, Any]]) -> None:
        data = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):  # no half line for the next append to join
                os.ftruncate(self._fd, size)
            raise

    def append(self, ops: list[Mapping[str, Any]]) -> None:
        if ops:
            self._write(ops)

    def ops(self) -> list[dict[str, Any]]:
        return read_spool(self.path)[1]

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def read_spool(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A buffer's header and ops. A torn last line (the writer died mid-write) is skipped;
    a bad line anywhere else is an error naming it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a ledger write") from None
    if not records or "ledger" not in records[0]:
        raise ValueError(f"{path}: not a gosok ledger buffer (no header line)")
    return records[0], records[1:]


@contextlib.contextmanager
def idle_spools() -> Iterator[list[Path]]:
    """Buffers no live writer holds, locked for the caller while it sends them."""
    held: list[tuple[Path, int]] = []
    try:
        for path in sorted(spool_dir().glob("*.jsonl")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # sent or removed since the listing
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            held.append((path, fd))
        yield [path for path, _ in held]
    finally:
        for _, fd in held:
            os.close(fd)


class LedgerWriter:
    """Applies ops in submission order on one daemon thread that owns the connection."""

    def __init__(
        self,
        path: str | None,
        say: Callable[[str], None] = print_stderr,
        timeout_s: float = WRITE_TIMEOUT_S,
        prune_older_than_s: float | None = None,
    ) -> None:
        self._say = say
        self._path = path
        self._timeout_s = timeout_s
        self._prune_s = prune_older_than_s
        self._said: set[str] = set()
        self._results: dict[str, Any] = {}
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()  # pending, spool, kept: shared with close()
        self._pending: list[dict[str, Any]] = []
        self._spool: Spool | None = None
        self._broken = False
        self._close_by = float("inf")
        self.kept: Path | None = None
        try:
            self._target = ledger_target(path)
        except ValueError as err:
            self._target = "<unusable ledger path>"
            self._break(err)
        self._thread = threading.Thread(target=self._run, name="gosok-ledger", daemon=True)
        self._thread.start()

    def op(self, method: str, job: str | None = None, **kwargs: Any) -> str:
        """Queue ``Ledger.<method>(**kwargs)``; ``job``: the id of the job's ``start_job``
        op. Returns this op's id."""
        op = {"id": uuid.uuid4().hex, "method": method, "kwargs": kwargs}
        if job is not None:
            op["job"] = job
        self._queue.put(op)
        return op["id"]

    def result(self, op_id: str) -> Any:
        return self._results.get(op_id)

    def applied(self, op_id: str) -> bool:
        return op_id in self._results

    def say_once(self, key: str, text: str) -> None:
        with self._lock:
            first = key not in self._said
            self._said.add(key)
        if first:
            self._say(text)

    # ---- the writer thread ---------------------------------------------------------------

    def _break(self, err: BaseException) -> None:
        """The ledger cannot be used for this job: later writes are dropped (one line)."""
        self._broken = True
        self.say_once(
            "failed",
            f"ledger: opening {self._target} failed ({type(err).__name__}: {err}); the job goes "
            "on without it, later ledger errors are not printed",
        )

    def _accept(self, op: dict[str, Any]) -> None:
        with self._lock:
            if self._broken:
                return
            if self._spool is not None and not self._pending:
                try:
                    self._spool.append([op])
                    return
                except OSError as err:  # the disk: keep it, and all after it, in memory
                    self.say_once("disk", f"ledger: cannot buffer on disk ({err})")
            self._pending.append(op)

    def _send(self, ledger: Ledger) -> None:
        """The buffer, then what is in memory, in order."""
        spool = self._spool
        if spool is not None:
            sent = spool.ops()
            for op in sent:
                self._apply(ledger, op)
            with self._lock:
                if self._spool is not spool:  # close() handed it to push meanwhile
                    return
                spool.remove()
                self._spool = None
            self._say(f"ledger: reachable again; {len(sent)} buffered writes sent")
        while True:
            with self._lock:
                if not self._pending:
                    return
                op = self._pending[0]
            self._apply(ledger, op)
            with self._lock:
                if self._pending and self._pending[0] is op:
                    self._pending.pop(0)

    def _away(self, err: BaseException) -> None:
        """Put what is in memory in the buffer (made now if need be) and say so once."""
        with self._lock:
            if self._broken:
                return
            try:
                if self._spool is None:
                    self._spool = Spool.create(self._target)
                self._spool.append(self._pending)
                self._pending = []
                where = f"buffering in {self._spool.path}"
            except OSError as disk:
                where = f"keeping writes in memory (cannot buffer on disk: {disk})"
        first = (str(err).strip().splitlines() or [""])[0]
        self.say_once(
            "away",
            f"ledger: cannot reach {self._target} ({type(err).__name__}: {first}); {where} "
            "and retrying; the job goes on",
        )

    def _run(self) -> None:
        ledger: Ledger | None = None
        closing, retry_at, backoff = False, 0.0, FIRST_RETRY_S
        while True:
            now = time.monotonic()
            waiting = self._spool is not None or bool(self._pending)
            wait = max(retry_at - now, 0.0) if waiting and not self._broken else None
            if closing:
                wait = min(wait if wait is not None else 0.0, max(self._close_by - now, 0.0))
            with contextlib.suppress(queue.Empty):
                item = self._queue.get(timeout=wait)
                if item is _CLOSE:
                    closing = True
                else:
                    self._accept(item)
            waiting = self._spool is not None or bool(self._pending)
            if waiting and not self._broken and time.monotonic() >= retry_at:
                try:
                    if ledger is None:
                        ledger = Ledger.open(self._path, timeout_s=self._timeout_s)
                    self._send(ledger)
                    backoff = FIRST_RETRY_S
                except Exception as err:
                    if ledger is not None:
                        with contextlib.suppress(Exception):
                            ledger.close()
                        ledger = None
                    if is_transient(err):
                        self._away(err)
                        retry_at = time.monotonic() + backoff
                        backoff = min(backoff * 2, MAX_RETRY_S)
                    else:
                        self._break(err)
                        with self._lock:
                            self._pending = []
                        self._keep()  # a buffer from an earlier outage stays for push
            waiting = self._spool is not None or bool(self._pending)
            if closing and self._queue.empty() and (self._broken or not waiting):
                break
            if closing and time.monotonic() >= self._close_by:
                self._keep()
                return
        if ledger is not None:
            if self._prune_s is not None:
                with contextlib.suppress(Exception):
                    ledger.prune_samples(self._prune_s)
            with contextlib.suppress(Exception):
                ledger.close()

    def _apply(self, ledger: Ledger, op: Mapping[str, Any]) -> None:
        try:
            self._results[op["id"]] = ledger.apply(op)
        except Exception as err:
            if is_transient(err):
                raise
            self.say_once(
                "refused",
                f"ledger: a {op['method']} write was refused ({type(err).__name__}: {err}); "
                "dropped, later refusals are not printed",
            )

    def _keep(self, extra: list[dict[str, Any]] | None = None) -> None:
        """Leave what was not sent in a buffer for ``gosok ledger push``, and say where."""
        with self._lock:
            ops = [*self._pending, *(extra or [])]
            self._pending = []
            if self._spool is None and not ops:
                return
            try:
                spool = self._spool or Spool.create(self._target)
                spool.append(ops)
                self._spool = None
                spool.release()
            except OSError as err:
                self._say(f"ledger: {len(ops)} writes lost: they cannot be buffered ({err})")
                return
            self.kept = spool.path
        self._say(
            f"ledger: {self._target} did not take every write; {len(read_spool(spool.path)[1])} "
            f"kept in {spool.path}: `gosok ledger push` sends them when it answers"
        )

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Send what is queued (retrying up to ``timeout_s``), then close; False when writes
        were left in a buffer for ``gosok ledger push``."""
        self._close_by = time.monotonic() + timeout_s
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s + 1.0)
        if self._thread.is_alive():  # a write still blocks: save the rest from here
            self._broken = True
            queued = []
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if item is not _CLOSE:
                        queued.append(item)
            self._keep(queued)
        return self.kept is None


def push(ledger_value: str | None, say: Callable[[str], None] = print_stderr) -> tuple[int, int]:
    """Send every idle buffer to its ledger (or ``ledger_value``); returns (buffers sent,
    buffers kept). A buffer is removed only when the ledger took every write in it."""
    sent = kept = 0
    with idle_spools() as paths:
        for path in paths:
            if path.stat().st_size == 0:  # its writer died before writing the header
                path.unlink(missing_ok=True)
                continue
            try:
                header, ops = read_spool(path)
                target = ledger_value or header["ledger"]
                refused = _send_buffer(target, ops)
            except Exception as err:
                kept += 1
                reason = "still unreachable" if is_transient(err) else "cannot be sent"
                say(f"{path.name}: {reason} ({type(err).__name__}: {err}); kept")
                continue
            if refused:
                kept += 1
                say(f"{path.name}: {target} refused {refused} of {len(ops)} writes (another "
                    "ledger than the one they began in?); kept")  # fmt: skip
                continue
            path.unlink()
            sent += 1
            say(f"{path.name}: {len(ops)} writes sent to {target}")
    return sent, kept


def _send_buffer(target: str, ops: list[dict[str, Any]]) -> int:
    """Apply ``ops`` to ``target``; how many it refused (a transient error raises)."""
    refused = 0
    with Ledger.open(target) as ledger:
        for op in ops:
            try:
                ledger.apply(op)
            except Exception as err:
                if is_transient(err):
                    raise
                refused += 1
    return refused
