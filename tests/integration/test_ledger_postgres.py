"""The ledger on a real PostgreSQL server: the backend-neutral store tests of
tests/unit/ledger/test_ledger_db.py again, writers migrating a new database at once, the
password only from libpq's environment, and a server restart that loses nothing."""

from __future__ import annotations

import multiprocessing

import pytest

from gosok.launcher.ledger import db
from gosok.launcher.ledger.db import Ledger
from tests.unit.ledger.test_ledger_db import (  # noqa: F401 - collected here against PostgreSQL
    test_allocations_are_recorded_once,
    test_attempt_updates_keep_earlier_fields_and_finish_merges_detail,
    test_concurrent_writers_lose_no_rows,
    test_journaled_ops_apply_once_and_follow_their_job,
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
