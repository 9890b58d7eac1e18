"""The ledger's store: concurrent writers, migrations, paths, updates, pruning, journaled
ops applied once, allocations. Backend-neutral tests take ``target`` (a SQLite file here);
tests/integration/test_ledger_postgres.py runs the same ones against a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from gosok.launcher.ledger import db
from gosok.launcher.ledger.db import Ledger, resolve_ledger_path

WRITERS = 4
ROWS_EACH = 200


@pytest.fixture
def target(tmp_path) -> str:
    return str(tmp_path / "new" / "ledger.sqlite")


def _writer(path: str, writer: int, barrier) -> None:
    barrier.wait()
    with Ledger.open(path) as ledger:
        for i in range(ROWS_EACH):
            job_id = f"w{writer}-{i}"
            ledger.start_job(job_id, project=f"p{writer}", cluster="c", gpus=1, started_unix=i)
            ledger.record_event(job_id, "checkpoint", seconds=1.0, unix=i)
            ledger.add_samples([{"cluster": "c", "node": f"n{writer}", "unix": i, "cpu_pct": 1}])


def test_concurrent_writers_lose_no_rows(target):
    path = target  # created (or migrated) by whichever writer is first
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(path, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with Ledger.open(path) as ledger:
        assert len(ledger.jobs()) == WRITERS * ROWS_EACH
        assert len(ledger.samples()) == WRITERS * ROWS_EACH
        assert all(len(ledger.events(f"w{w}-7")) == 1 for w in range(WRITERS))
        assert ledger.schema_version == db.SCHEMA_VERSION


def _make_v1(path) -> None:
    conn = sqlite3.connect(path)
    for statement in db.V1_DDL:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (job_id, kind, project, cluster, gpu_type, nodes, gpus, started_unix,"
        " first_step_unix, finished_unix, exit_status, steps, detail)"
        " VALUES ('old', 'launch', 'p', 'c', 'A100', 2, 16, 10, 20, 110, 'ok', 500, '{\"a\": 1}')"
    )
    conn.execute("INSERT INTO attempts VALUES ('old', 0, 10, 20, 110, NULL, 500, NULL)")
    conn.execute("INSERT INTO events VALUES ('old', 50, 'checkpoint', 5, '{}')")
    conn.execute("INSERT INTO idle_spans VALUES ('c', 'n1', 0, 100, 0.5)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def _columns(path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    found = {t: sorted(r[1] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
    conn.close()
    return found


def test_v1_file_is_migrated_keeping_rows(tmp_path):
    path = tmp_path / "v1.sqlite"
    _make_v1(path)
    with Ledger.open(path) as ledger:
        assert ledger.schema_version == db.SCHEMA_VERSION
        job = ledger.job("old")
        assert (job["gpus"], job["steps"], job["detail"], job["tokens"], job["mfu"]) == (
            16,
            500,
            {"a": 1},
            None,
            None,
        )
        assert ledger.attempts("old")[0]["last_step"] == 500
        assert ledger.attempts("old")[0]["last_step_unix"] is None
        assert ledger.events("old")[0]["seconds"] == 5
        assert ledger.idle_spans()[0]["device"] == ""
        ledger.finish_job("old", exit_status="ok", finished_unix=110, tokens=1e9, mfu=0.4)
        assert ledger.job("old")["mfu"] == 0.4
        assert ledger.add_samples([{"cluster": "c", "node": "n1", "unix": 1.0}]) == 1
    fresh = tmp_path / "fresh.sqlite"
    Ledger.open(fresh).close()
    assert _columns(path) == _columns(fresh)


def test_newer_or_foreign_file_is_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    Ledger.open(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Ledger.open(newer)
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(RuntimeError, match="not a gosok ledger"):
        Ledger.open(foreign)


def test_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert resolve_ledger_path(None) == tmp_path / "gosok" / "ledger.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert str(resolve_ledger_path("")).endswith(".local/share/gosok/ledger.sqlite")
    assert str(resolve_ledger_path("sqlite:////abs/l.sqlite")) == "/abs/l.sqlite"
    assert str(resolve_ledger_path("sqlite:///rel/l.sqlite")) == "rel/l.sqlite"
    assert resolve_ledger_path("sqlite://") == ":memory:"
    for url in (
        "postgresql://bob:hunter2@db:5432/ledger",
        "postgres://bob:hunter2@db/ledger?sslmode=require",
        "postgresql://bob@db/ledger?password=hunter2",
        "postgresql://bob@db/ledger?sslpassword=hunter2",
        "postgresql://bob:hunter2/x@db/ledger",  # unencoded '/', '?', '#' in a password
        "postgresql://bob:hun?ter2@db/ledger",
        "postgresql://bob:hunter2#@db/ledger",
        "postgresql://bob:1234/hunter2@db/ledger",
    ):
        with pytest.raises(ValueError, match="PGPASSWORD") as err:
            resolve_ledger_path(url)
        assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="not shown") as err:
        resolve_ledger_path("postgresql://alice:hunter2/ledger")  # no '@': a bad port
    assert "hunter2" not in str(err.value)
    assert resolve_ledger_path("postgres://bob@db:5432/l") == "postgresql://bob@db:5432/l"
    assert isinstance(resolve_ledger_path("postgresql+psycopg://db/l"), db.ServerURL)
    with pytest.raises(ValueError, match="mysql scheme"):
        resolve_ledger_path("mysql://db/l")
    with pytest.raises(ValueError, match="sqlite:///"):
        resolve_ledger_path("sqlite://host/x.sqlite")


def test_attempt_updates_keep_earlier_fields_and_finish_merges_detail(target):
    with Ledger.open(target) as ledger:
        ledger.start_job("j", kind="bench", project="p", started_unix=1.0, detail={"a": 1})
        ledger.record_attempt("j", 0, started_unix=1.0)
        ledger.record_attempt("j", 0, first_step_unix=2.0)
        ledger.record_attempt("j", 0, ended_unix=9.0, last_step=7, cause="ok")
        (attempt,) = ledger.attempts("j")
        assert (attempt["started_unix"], attempt["first_step_unix"], attempt["ended_unix"]) == (
            1.0,
            2.0,
            9.0,
        )
        ledger.finish_job("j", exit_status="ok", finished_unix=10.0, detail={"b": 2})
        job = ledger.job("j")
        assert job["detail"] == {"a": 1, "b": 2} and job["first_step_unix"] == 2.0
        assert ledger.jobs(project="p", since_unix=0.5)[0]["job_id"] == "j"
        assert ledger.jobs(project="q") == [] and ledger.jobs(since_unix=5.0) == []
        with pytest.raises(KeyError):
            ledger.finish_job("nope", exit_status="ok")
        with pytest.raises(ValueError, match="kind"):
            ledger.start_job("k", kind="train")


def test_prune_samples_keeps_aggregates(target):
    with Ledger.open(target) as ledger:
        rows = [
            {
                "job_id": "j",
                "cluster": "c",
                "node": "n",
                "device": "gpu0",
                "unix": float(t),
                "gpu_util_pct": float(t),
                "power_w": 100.0 + t,
            }
            for t in range(10)
        ]
        ledger.add_samples(rows)
        assert ledger.prune_samples(older_than_s=5, now_unix=10) == 5  # unix 0..4
        assert ledger.prune_samples(older_than_s=0, now_unix=10) == 5  # unix 5..9, merged
        assert ledger.samples() == []
        (agg,) = ledger.sample_aggregates("j")
        assert (agg["n"], agg["first_unix"], agg["last_unix"]) == (10, 0.0, 9.0)
        assert agg["gpu_util_pct_sum"] == sum(range(10)) and agg["gpu_util_pct_max"] == 9.0
        assert agg["power_w_n"] == 10 and agg["cpu_pct_n"] == 0 and agg["cpu_pct_max"] is None


def test_journaled_ops_apply_once_and_follow_their_job(target):
    start = {"id": "w1-0", "method": "start_job", "kwargs": {"job_id": "run", "gpus": 2}}
    event = {"id": "w1-1", "job": "w1-0", "method": "record_event", "kwargs": {"kind": "x"}}
    rows = {"id": "w1-2", "job": "w1-0", "method": "add_samples", "kwargs": {"rows": [
        {"cluster": "c", "node": "n", "unix": 1.0, "cpu_pct": 3.0}]}}  # fmt: skip
    with Ledger.open(target) as ledger:
        ledger.start_job("run", gpus=1)  # an earlier run took the id
        for _ in range(2):  # a buffer sent twice (the answer to the first was lost)
            assert [ledger.apply(op) for op in (start, event, rows)] == ["run-2", None, None]
        assert len(ledger.events("run-2")) == 1 and ledger.job("run-2")["gpus"] == 2
        assert [s["job_id"] for s in ledger.samples()] == ["run-2"]
        orphan = {"id": "w2-1", "job": "w2-0", "method": "record_event", "kwargs": {"kind": "x"}}
        with pytest.raises(KeyError, match="not applied"):
            ledger.apply(orphan)
        with pytest.raises(ValueError, match="journaled"):
            ledger.apply({"id": "w3", "method": "prune_samples", "kwargs": {}})


def _start_same_job(path: str, barrier, out) -> None:
    with Ledger.open(path) as ledger:
        barrier.wait()
        out.put(ledger.apply({"id": f"op-{multiprocessing.current_process().pid}",
                              "method": "start_job", "kwargs": {"job_id": "run"}}))  # fmt: skip


def test_one_base_id_from_two_clusters_at_once_makes_two_jobs(target):
    Ledger.open(target).close()
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_start_same_job, args=(target, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    ids = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
    assert ids == ["run", "run-2", "run-3", "run-4"]
    with Ledger.open(target) as ledger:
        assert len(ledger.jobs()) == 4


def test_allocations_are_recorded_once(target):
    grant = dict(project="p", cluster="c", provider="cloud-a", gpu_type="H200", gpus=64)
    with Ledger.open(target) as ledger:
        first = ledger.allocate(**grant, start_unix=0.0, end_unix=3600.0)
        again = ledger.allocate(**grant, start_unix=0.0, end_unix=3600.0)
        other = ledger.allocate(**{**grant, "gpus": 8}, start_unix=3600.0, end_unix=7200.0)
        assert first == again != other
        assert [a["gpus"] for a in ledger.allocations(cluster="c")] == [64, 8]
        with pytest.raises(ValueError, match="end after start"):
            ledger.allocate(**grant, start_unix=5.0, end_unix=5.0)
