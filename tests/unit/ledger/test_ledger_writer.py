"""The buffered writer without a server: a ledger that blocks past close() keeps the
writes in a buffer, buffers record an absolute ledger path, and push leaves alone what it
cannot send (an empty file from a writer that died first is removed, a damaged one kept)."""

from __future__ import annotations

import sqlite3

from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.writer import LedgerWriter, push, read_spool, spool_dir


def test_a_ledger_blocking_past_close_keeps_the_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = tmp_path / "l.sqlite"
    Ledger.open(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    said: list[str] = []
    writer = LedgerWriter(str(path), said.append, timeout_s=3.0)
    start = writer.op("start_job", job_id="j", gpus=1)
    for i in range(5):
        writer.op("record_event", job=start, kind="x", unix=float(i))
    assert not writer.close(timeout_s=0.5)
    header, ops = read_spool(writer.kept)
    assert header["ledger"] == str(path.resolve()) and len(ops) == 6
    assert "gosok ledger push" in said[-1]
    blocker.execute("ROLLBACK")
    blocker.close()
    assert push(None, say=said.append) == (1, 0)
    with Ledger.open(path) as ledger:
        assert len(ledger.events("j")) == 5


def test_push_removes_an_empty_buffer_and_keeps_a_damaged_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (spool_dir() / "a-empty.jsonl").write_text("")
    damaged = spool_dir() / "b-damaged.jsonl"
    damaged.write_text('{"ledger": "x.sqlite"}\n{not json\n{"id": "1"}\n')
    said: list[str] = []
    assert push(None, say=said.append) == (0, 1)
    assert not (spool_dir() / "a-empty.jsonl").exists() and damaged.exists()
    assert "line 2" in said[0] and "kept" in said[0]
