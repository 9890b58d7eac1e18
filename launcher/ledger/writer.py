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
line printed: a ledger never fails a job.
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


def _print_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def spool_dir() -> Path:
    """Where writers keep what the ledger has not taken yet: 0700, checked on every use."""
    from gosok.launcher.ranks.private import own_dir

    return own_dir(default_ledger_path().parent / "spool")


class Spool:
    """One writer's buffer: a header line naming the ledger, then one op per line. The
    writer holds an exclusive lock on it, so ``push`` leaves a live writer's buffer alone."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def create(cls, ledger: str) -> Spool:
        path = spool_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        handle = os.fdopen(fd, "a", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_EX)
        spool = cls(path, handle)
        spool._write([{"ledger": ledger, "created_unix": time.time()}])
        return spool

    def _write(self, lines: list[Mapping[str, Any]]) -> None:
        self._handle.write("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())

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
        with contextlib.suppress(OSError, ValueError):
            self._handle.close()


def read_spool(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A buffer's header and ops; a torn last line (the writer died mid-write) is skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    if not records or "ledger" not in records[0]:
        raise ValueError(f"{path}: not a gosok ledger buffer (no header line)")
    return records[0], records[1:]


@contextlib.contextmanager
def idle_spools() -> Iterator[list[Path]]:
    """Buffers no live writer holds, locked for the caller while it sends them."""
    held = []
    try:
        for path in sorted(spool_dir().glob("*.jsonl")):
            handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held until the end
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((path, handle))
        yield [path for path, _ in held]
    finally:
        for _, handle in held:
            handle.close()


class LedgerWriter:
    """Applies ops in submission order on one daemon thread that owns the connection."""

    def __init__(
        self,
        path: str | None,
        say: Callable[[str], None] = _print_stderr,
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
        self._close_by = float("inf")
        self.kept: Path | None = None
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

    def say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self._say(text)

    def _target(self) -> str:
        return str(resolve_ledger_path(self._path))

    def _run(self) -> None:
        ledger: Ledger | None = None
        pending: list[dict[str, Any]] = []
        spool: Spool | None = None
        closing, retry_at, backoff, broken = False, 0.0, FIRST_RETRY_S, False
        while True:
            wait = None if spool is None and not pending else max(retry_at - time.time(), 0)
            if closing:
                wait = min(wait if wait is not None else 0.0, max(self._close_by - time.time(), 0))
            try:
                item = self._queue.get(timeout=wait)
                if item is _CLOSE:
                    closing = True
                elif broken:
                    pass
                elif spool is not None:
                    spool.append([item])
                else:
                    pending.append(item)
            except queue.Empty:
                pass
            except Exception as err:  # the buffer's disk: keep the op in memory
                pending.append(item)
                self.say_once("spool", f"ledger: cannot buffer on disk ({err})")
            if time.time() >= retry_at and not broken:
                try:
                    if ledger is None:
                        ledger = Ledger.open(self._path, timeout_s=self._timeout_s)
                    if spool is not None:
                        sent = spool.ops()
                        for op in sent:
                            self._apply(ledger, op)
                        spool.remove()
                        spool = None
                        self._say(f"ledger: reachable again; {len(sent)} buffered writes sent")
                    while pending:
                        self._apply(ledger, pending[0])
                        pending.pop(0)
                    backoff = FIRST_RETRY_S
                except Exception as err:
                    if not is_transient(err):
                        broken, pending = True, []
                        self.say_once(
                            "failed",
                            f"ledger: opening {self._target()} failed ({type(err).__name__}: "
                            f"{err}); the job goes on without it, later ledger errors are not "
                            "printed",
                        )
                        continue
                    with contextlib.suppress(Exception):
                        ledger.close() if ledger is not None else None
                    ledger = None
                    try:
                        if spool is None:
                            spool = Spool.create(self._target())
                        spool.append(pending)
                        pending = []
                        where = f"buffering in {spool.path}"
                    except Exception as disk:
                        where = f"keeping writes in memory (cannot buffer on disk: {disk})"
                    self.say_once(
                        "away",
                        f"ledger: cannot reach {self._target()} ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
                        f"{where} and retrying; the job goes on",
                    )
                    retry_at, backoff = time.time() + backoff, min(backoff * 2, MAX_RETRY_S)
            if closing and (broken or (spool is None and not pending)) and self._queue.empty():
                break
            if closing and time.time() >= self._close_by:
                self._keep(spool, pending)
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
                "failed",
                f"ledger: a {op['method']} write was refused ({type(err).__name__}: {err}); "
                "dropped, later refusals are not printed",
            )

    def _keep(self, spool: Spool | None, pending: list[dict[str, Any]]) -> None:
        try:
            spool = spool or Spool.create(self._target())
            spool.append(pending)
            count = len(spool.ops())
            spool.release()
            self.kept = spool.path
            self._say(
                f"ledger: still unreachable; {count} writes kept in {spool.path}: "
                "`gosok ledger push` sends them when it is back"
            )
        except Exception as err:
            self._say(f"ledger: still unreachable and the buffer failed ({err}); writes lost")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Send what is queued (retrying up to ``timeout_s``), then close; False when the
        writes were left in a buffer for ``gosok ledger push``."""
        self._close_by = time.time() + timeout_s
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s + 5.0)
        return self.kept is None and not self._thread.is_alive()


def push(ledger_value: str | None, say: Callable[[str], None] = _print_stderr) -> tuple[int, int]:
    """Send every idle buffer to its ledger (or ``ledger_value``); returns (buffers sent,
    buffers kept because their ledger is still away)."""
    sent = kept = 0
    with idle_spools() as paths:
        for path in paths:
            header, ops = read_spool(path)
            target = ledger_value or header["ledger"]
            refused = 0
            try:
                with Ledger.open(target) as ledger:
                    for op in ops:
                        try:
                            ledger.apply(op)
                        except Exception as err:
                            if is_transient(err):
                                raise
                            refused += 1
            except Exception as err:
                if not is_transient(err):
                    raise
                kept += 1
                say(f"{path.name}: {target} still unreachable ({type(err).__name__}); kept")
                continue
            path.unlink()
            sent += 1
            note = f" ({refused} refused by the ledger, dropped)" if refused else ""
            say(f"{path.name}: {len(ops) - refused} writes sent to {target}{note}")
    return sent, kept
