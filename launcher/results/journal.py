"""The measurement journal: every measurement is appended to ``<run dir>/journal.jsonl``
the moment it is taken (one JSON line, flushed and fsynced), so a crash, a SIGKILL or a
full disk after an hour loses nothing already measured. The sealed ``results.json`` is
still written at the end; when it is missing, the journal is what the run left.

The first line is a header (``{"journal": "gosok.journal/1", ...}``); each later line is
``{"kind": ..., "unix": ..., "record": {...}}``. A torn last line (the process died while
writing it) is ignored when reading.

Use::

    with journaling(run_dir / JOURNAL_NAME, {"config": ...}):
        ...
        note("collectives", record)        # anywhere below, on the driver
    header, entries = read_journal(run_dir / JOURNAL_NAME)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gosok.launcher.results.store import fsync_dir

JOURNAL_NAME = "journal.jsonl"
JOURNAL_SCHEMA = "gosok.journal/1"


class Journal:
    """An append-only, fsynced JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._handle = os.fdopen(fd, "a", encoding="utf-8")
        self._write({"journal": JOURNAL_SCHEMA, "started_unix": time.time(), **header})
        fsync_dir(self.path.parent)

    def _write(self, entry: dict[str, Any]) -> None:
        self._handle.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def append(self, kind: str, record: dict[str, Any]) -> None:
        self._write({"kind": kind, "unix": time.time(), "record": record})

    def close(self) -> None:
        self._handle.close()


_ACTIVE: contextvars.ContextVar[Journal | None] = contextvars.ContextVar("journal", default=None)


@contextlib.contextmanager
def journaling(path: str | os.PathLike[str], header: dict[str, Any]) -> Iterator[Journal]:
    """Make ``note`` write to the journal at ``path`` for the duration of the block."""
    journal = Journal(path, header)
    token = _ACTIVE.set(journal)
    try:
        yield journal
    finally:
        _ACTIVE.reset(token)
        journal.close()


def note(kind: str, record: dict[str, Any]) -> None:
    """Append a measurement to the active journal (no-op outside ``journaling``)."""
    journal = _ACTIVE.get()
    if journal is not None:
        journal.append(kind, record)


def read_journal(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, entries); raises ValueError when the file is not a gosok journal."""
    header: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a process that died mid-write
            if not isinstance(entry, dict):
                continue
            if header is None:
                if entry.get("journal") != JOURNAL_SCHEMA:
                    raise ValueError(f"{path}: not a gosok journal")
                header = entry
            elif isinstance(entry.get("record"), dict):
                entries.append(entry)
    if header is None:
        raise ValueError(f"{path}: empty journal")
    return header, entries
