"""The measurement journal: appended and fsynced as measured, torn lines ignored, and the
atomic writer leaves no half-written file."""

from __future__ import annotations

import json

import pytest

from gosok.launcher.results.journal import JOURNAL_NAME, journaling, note, read_journal
from gosok.launcher.results.store import atomic_write_bytes


def test_notes_reach_the_journal_and_a_torn_line_is_ignored(tmp_path):
    path = tmp_path / JOURNAL_NAME
    note("collectives", {"ignored": True})  # no active journal: a no-op
    with journaling(path, {"kind": "collectives"}):
        for size in (1024, 4096, 16384):
            note("collectives", {"size_bytes": size})
    with open(path, "a") as handle:
        handle.write('{"kind": "collectives", "record": {"size_b')  # died mid-write
    header, entries = read_journal(path)
    assert header["kind"] == "collectives"
    assert [e["record"]["size_bytes"] for e in entries] == [1024, 4096, 16384]
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_foreign_file_is_not_a_journal(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"something": 1}) + "\n")
    with pytest.raises(ValueError, match="not a gosok journal"):
        read_journal(path)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr("gosok.launcher.results.store.os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
