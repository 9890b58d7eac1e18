"""The ledger on a real PostgreSQL server: the backend-neutral store tests of
tests/unit/ledger/test_ledger_db.py again, writers migrating a new database at once, the
password only from libpq's environment, a server down mid-run that loses nothing (the
writer buffers and sends it when the server is back), and ``gosok ledger push`` sending
what a writer kept."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from gosok.launcher.ledger import db
from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.writer import LedgerWriter, spool_dir
from tests.conftest import run_gosok
from tests.unit.ledger.test_ledger_db import (  # noqa: F401 - collected here against PostgreSQL
    test_allocations_are_recorded_once,
    test_attempt_updates_keep_earlier_fields_and_finish_merges_detail,
    test_concurrent_writers_lose_no_rows,
    test_journaled_ops_apply_once_and_follow_their_job,
    test_one_base_id_from_two_clusters_at_once_makes_two_jobs,
    test_prune_samples_keeps_aggregates,
)


@pytest.fixture
def target(pg_url) -> str:
    return pg_url


def _open_and_close(url: str, barrier) -> None:
    barrier.wait()
    Ledger.open(url).close()


def test_writers_starting_at_once_migrate_once(pg_url):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_and_close, args=(pg_url, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    with Ledger.open(pg_url) as ledger:
        assert ledger.schema_version == db.SCHEMA_VERSION
        cur = ledger._db.read()
        cur.execute("SELECT COUNT(*) FROM gosok_schema")
        assert cur.fetchone()[0] == 1


def test_password_comes_from_the_environment_only(pg_url, monkeypatch):
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")
    with pytest.raises(Exception, match="password"):
        Ledger.open(pg_url, timeout_s=5)


def _wait(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _spools() -> list:
    return sorted(spool_dir().glob("*.jsonl"))


def test_writer_buffers_while_the_server_is_down(postgres, pg_url):
    said: list[str] = []
    before = _spools()
    writer = LedgerWriter(pg_url, said.append)
    start = writer.op("start_job", job_id="blip", gpus=2)
    _wait(lambda: writer.result(start) is not None)
    postgres.stop("immediate")
    try:
        for i in range(50):
            writer.op("record_event", job=start, kind="step", unix=float(i))
        _wait(lambda: len(_spools()) > len(before))  # buffered on disk, 0600
        (buffer,) = set(_spools()) - set(before)
        assert buffer.stat().st_mode & 0o777 == 0o600
    finally:
        postgres.start_again()
    writer.op("finish_job", job=start, exit_status="ok")
    assert writer.close(timeout_s=60)
    with Ledger.open(pg_url) as ledger:
        assert len(ledger.events("blip")) == 50, said
        assert ledger.job("blip")["exit_status"] == "ok"
    assert _spools() == before
    assert sum("cannot reach" in line for line in said) == 1, said
    assert any("reachable again" in line for line in said), said
    assert not any(postgres.env["PGPASSWORD"] in line for line in said)


def test_push_sends_what_a_writer_kept(postgres, pg_url):
    said: list[str] = []
    postgres.stop("immediate")
    try:
        writer = LedgerWriter(pg_url, said.append)
        start = writer.op("start_job", job_id="away", gpus=1)
        writer.op("record_event", job=start, kind="checkpoint", seconds=1.0)
        assert not writer.close(timeout_s=1.0)
        assert writer.kept is not None and writer.kept.exists()
        assert "gosok ledger push" in said[-1]
        refused = run_gosok("ledger", "push", env=postgres.env, timeout=120)
        assert refused.returncode == 1 and "still unreachable" in refused.stdout
    finally:
        postgres.start_again()
    pushed = run_gosok("ledger", "push", env=postgres.env, timeout=120)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "2 writes sent" in pushed.stdout
    assert not writer.kept.exists()
    with Ledger.open(pg_url) as ledger:
        assert len(ledger.events("away")) == 1
