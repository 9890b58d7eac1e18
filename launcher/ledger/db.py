"""The goodput ledger's store: one SQLite file that every launcher, benchmark and watcher
process on a machine writes to at once.

Use::

    from gosok.launcher.ledger.db import Ledger

    with Ledger.open() as ledger:                      # default: user data dir
        ledger.start_job("run-17", project="llm", cluster="h200", gpu_type="H200",
                         nodes=4, gpus=32)
        ledger.record_attempt("run-17", 0, started_unix=t0, first_step_unix=t1)
        ledger.record_event("run-17", "checkpoint", seconds=42.0)
        ledger.record_attempt("run-17", 0, ended_unix=t2, cause="nccl timeout", last_step=900)
        ledger.finish_job("run-17", exit_status="ok", steps=5000, tokens=2.1e10, mfu=0.41)
        ledger.jobs(project="llm")

``Ledger.open(path)`` takes a file path, ``sqlite:///relative/path``,
``sqlite:////absolute/path`` (SQLAlchemy's spelling, so one URL means the same file
everywhere) or ``postgresql://user@host:port/database`` (the password from libpq's
environment, never the URL; see ``backends.py``).

Concurrency: on SQLite, WAL journal, a busy timeout, and write transactions that take the
write lock up front, so processes on one machine wait for each other instead of failing
(the file must be on a local disk). On PostgreSQL, writers on many clusters at once.

Schema: the version lives in ``PRAGMA user_version`` (SQLite) or ``gosok_schema``
(PostgreSQL). An older ledger is upgraded in place one step at a time (``MIGRATIONS``),
keeping its rows, under a lock that makes writers starting at once migrate it once; one
newer than this code is refused. Version 1 had no ``samples``/``sample_aggregates``, no
``jobs.tokens``/``jobs.mfu``, no ``attempts.last_step_unix``, no ``idle_spans.device``;
version 2 had no ``allocations``, ``applied_ops`` or ``busy_spans``.

``apply(op)`` writes one journaled operation exactly once (``applied_ops`` remembers its
id): what a writer buffered while the ledger was away can be sent again safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .backends import ServerURL, connect, default_ledger_path, resolve_ledger_path

__all__ = ["Ledger", "ServerURL", "default_ledger_path", "resolve_ledger_path"]

SCHEMA_VERSION = 3
JOB_KINDS = ("launch", "bench")
SAMPLE_METRICS = ("gpu_util_pct", "mem_used_bytes", "power_w", "sm_clock_mhz", "cpu_pct")

V1_DDL = (
    """CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        project TEXT NOT NULL,
        cluster TEXT NOT NULL,
        gpu_type TEXT NOT NULL,
        nodes INTEGER NOT NULL,
        gpus INTEGER NOT NULL,
        started_unix DOUBLE PRECISION NOT NULL,
        first_step_unix DOUBLE PRECISION,
        finished_unix DOUBLE PRECISION,
        exit_status TEXT,
        steps BIGINT,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE attempts (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        started_unix DOUBLE PRECISION,
        first_step_unix DOUBLE PRECISION,
        ended_unix DOUBLE PRECISION,
        cause TEXT,
        last_step BIGINT,
        resumed_from_step BIGINT,
        PRIMARY KEY (job_id, attempt)
    )""",
    """CREATE TABLE events (
        job_id TEXT NOT NULL,
        unix DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE idle_spans (
        cluster TEXT NOT NULL,
        node TEXT NOT NULL,
        start_unix DOUBLE PRECISION NOT NULL,
        end_unix DOUBLE PRECISION NOT NULL,
        mean_util_pct DOUBLE PRECISION
    )""",
    "CREATE INDEX events_job ON events (job_id, unix)",
    "CREATE INDEX jobs_started ON jobs (started_unix)",
    "CREATE INDEX idle_spans_time ON idle_spans (cluster, start_unix)",
)

_AGGREGATE_COLUMNS = ",\n        ".join(
    f"{m}_n BIGINT NOT NULL DEFAULT 0, {m}_sum DOUBLE PRECISION NOT NULL DEFAULT 0, "
    f"{m}_max DOUBLE PRECISION"
    for m in SAMPLE_METRICS
)

_V2_NEW_TABLES = (
    """CREATE TABLE samples (
        job_id TEXT,
        cluster TEXT NOT NULL,
        node TEXT NOT NULL,
        device TEXT NOT NULL DEFAULT '',
        unix DOUBLE PRECISION NOT NULL,
        gpu_util_pct DOUBLE PRECISION,
        mem_used_bytes BIGINT,
        power_w DOUBLE PRECISION,
        sm_clock_mhz DOUBLE PRECISION,
        cpu_pct DOUBLE PRECISION
    )""",
    f"""CREATE TABLE sample_aggregates (
        job_key TEXT NOT NULL,
        cluster TEXT NOT NULL,
        node TEXT NOT NULL,
        device TEXT NOT NULL,
        n BIGINT NOT NULL,
        first_unix DOUBLE PRECISION NOT NULL,
        last_unix DOUBLE PRECISION NOT NULL,
        {_AGGREGATE_COLUMNS},
        PRIMARY KEY (job_key, cluster, node, device)
    )""",
    "CREATE INDEX samples_time ON samples (unix)",
    "CREATE INDEX samples_node ON samples (cluster, node, unix)",
)


def _migrate_1_to_2(cur: Any) -> None:
    cur.execute("ALTER TABLE jobs ADD COLUMN tokens DOUBLE PRECISION")
    cur.execute("ALTER TABLE jobs ADD COLUMN mfu DOUBLE PRECISION")
    cur.execute("ALTER TABLE attempts ADD COLUMN last_step_unix DOUBLE PRECISION")
    cur.execute("ALTER TABLE idle_spans ADD COLUMN device TEXT NOT NULL DEFAULT ''")
    for statement in _V2_NEW_TABLES:
        cur.execute(statement)


_V3_NEW_TABLES = (
    """CREATE TABLE allocations (
        allocation_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        cluster TEXT NOT NULL,
        gpu_type TEXT NOT NULL,
        project TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        start_unix DOUBLE PRECISION NOT NULL,
        end_unix DOUBLE PRECISION NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE applied_ops (
        op_id TEXT PRIMARY KEY,
        result TEXT,
        unix DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE busy_spans (
        cluster TEXT NOT NULL,
        node TEXT NOT NULL,
        device TEXT NOT NULL,
        start_unix DOUBLE PRECISION NOT NULL,
        end_unix DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX allocations_time ON allocations (cluster, start_unix)",
    "CREATE INDEX samples_job ON samples (job_id, unix)",
    "CREATE INDEX busy_spans_time ON busy_spans (cluster, start_unix)",
    "CREATE INDEX applied_ops_time ON applied_ops (unix)",
)


def _migrate_2_to_3(cur: Any) -> None:
    for statement in _V3_NEW_TABLES:
        cur.execute(statement)


# MIGRATIONS[n] upgrades a version-n ledger to version n + 1.
MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}
# What ``apply`` may run, and which of them name a job (its first argument).
JOURNALED = ("start_job", "record_attempt", "record_event", "finish_job", "add_samples",
             "add_idle_span", "allocate")  # fmt: skip
JOB_METHODS = ("start_job", "record_attempt", "record_event", "finish_job")
BUSY_FROM_PCT = 5.0  # a pruned watcher sample at or above this counts as busy
OPS_KEPT_S = 30 * 24 * 3600.0  # a buffer older than this could be applied twice


def _create_v1(cur: Any) -> None:
    for statement in V1_DDL:
        cur.execute(statement)


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(value or {}), sort_keys=True, default=str)


def _row(cur: Any, raw: tuple) -> dict[str, Any]:
    row = {d[0]: v for d, v in zip(cur.description, raw, strict=True)}
    if isinstance(row.get("detail"), str):
        row["detail"] = json.loads(row["detail"])
    return row


class Ledger:
    """Jobs, attempts, events, utilisation samples, idle spans and allocations in one
    SQLite file or PostgreSQL database.

    Times are unix seconds (float). Methods that take ``unix=None`` use ``time.time()``.
    """

    def __init__(self, db: Any, path: Path | str) -> None:
        self._db = db
        self.path = path
        self._cur: Any = None

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One transaction; a write inside another (``apply``) joins it."""
        if self._cur is not None:
            yield self._cur
            return
        with self._db.write() as cur:
            self._cur = cur
            try:
                yield cur
            finally:
                self._cur = None

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, timeout_s: float = 30.0) -> Ledger:
        """Open (creating or upgrading) the ledger at ``path``; see ``resolve_ledger_path``."""
        resolved = resolve_ledger_path(path)
        db = connect(resolved, timeout_s)
        try:
            _upgrade(db)
        except BaseException:
            db.close()
            raise
        return cls(db, resolved)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._db.schema_version()

    # ---- writing -------------------------------------------------------------------

    def start_job(
        self,
        job_id: str,
        *,
        kind: str = "launch",
        project: str = "default",
        cluster: str = "",
        gpu_type: str = "",
        nodes: int = 1,
        gpus: int = 0,
        started_unix: float | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``job_id`` was allocated ``gpus`` devices on ``nodes`` nodes.

        ``gpus`` counts GPUs, or CPU ranks where ``gpu_type`` is ``"cpu"``. Calling it
        again for the same job (a re-submitted run) replaces the job's header fields.
        """
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind {kind!r}: must be one of {', '.join(JOB_KINDS)}")
        params = {
            "job_id": job_id,
            "kind": kind,
            "project": project,
            "cluster": cluster,
            "gpu_type": gpu_type,
            "nodes": int(nodes),
            "gpus": int(gpus),
            "started_unix": time.time() if started_unix is None else float(started_unix),
            "detail": _json(detail),
        }
        with self._write() as cur:
            cur.execute(
                "INSERT INTO jobs (job_id, kind, project, cluster, gpu_type, nodes, gpus,"
                " started_unix, detail) VALUES (:job_id, :kind, :project, :cluster,"
                " :gpu_type, :nodes, :gpus, :started_unix, :detail)"
                " ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind,"
                " project = excluded.project, cluster = excluded.cluster,"
                " gpu_type = excluded.gpu_type, nodes = excluded.nodes, gpus = excluded.gpus,"
                " started_unix = excluded.started_unix, detail = excluded.detail",
                params,
            )

    def record_attempt(
        self,
        job_id: str,
        attempt: int,
        *,
        started_unix: float | None = None,
        first_step_unix: float | None = None,
        last_step_unix: float | None = None,
        ended_unix: float | None = None,
        cause: str | None = None,
        last_step: int | None = None,
        resumed_from_step: int | None = None,
    ) -> None:
        """Create or update attempt ``attempt`` of ``job_id``; ``None`` fields keep their
        stored value, so call it at the attempt's start, first step and end.

        ``cause`` is why the attempt ended (``None`` or ``"ok"`` for success);
        ``resumed_from_step`` the checkpoint step it started from (0 or ``None``: scratch);
        ``last_step_unix`` when ``last_step`` was reached (without it the attempt's end is
        taken as its last progress).
        """
        params = {
            "job_id": job_id,
            "attempt": int(attempt),
            "started_unix": started_unix,
            "first_step_unix": first_step_unix,
            "last_step_unix": last_step_unix,
            "ended_unix": ended_unix,
            "cause": cause,
            "last_step": last_step,
            "resumed_from_step": resumed_from_step,
        }
        fields = [k for k in params if k not in ("job_id", "attempt")]
        updates = ", ".join(f"{f} = COALESCE(excluded.{f}, attempts.{f})" for f in fields)
        with self._write() as cur:
            cur.execute(
                f"INSERT INTO attempts (job_id, attempt, {', '.join(fields)}) VALUES"
                f" (:job_id, :attempt, {', '.join(':' + f for f in fields)})"
                f" ON CONFLICT (job_id, attempt) DO UPDATE SET {updates}",
                params,
            )

    def record_event(
        self,
        job_id: str,
        kind: str,
        *,
        seconds: float = 0.0,
        unix: float | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an event; for ``kind="checkpoint"``, ``seconds`` is the time training
        was blocked saving and ``unix`` when the save finished."""
        with self._write() as cur:
            cur.execute(
                "INSERT INTO events (job_id, unix, kind, seconds, detail)"
                " VALUES (:job_id, :unix, :kind, :seconds, :detail)",
                {
                    "job_id": job_id,
                    "unix": time.time() if unix is None else float(unix),
                    "kind": kind,
                    "seconds": float(seconds),
                    "detail": _json(detail),
                },
            )

    def finish_job(
        self,
        job_id: str,
        *,
        exit_status: str,
        finished_unix: float | None = None,
        steps: int | None = None,
        tokens: float | None = None,
        mfu: float | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Close the job: when its allocation ended and how. ``detail`` is merged into
        the stored detail. ``first_step_unix`` is filled from the earliest attempt."""
        with self._write() as cur:
            cur.execute("SELECT detail FROM jobs WHERE job_id = :job_id", {"job_id": job_id})
            found = cur.fetchone()
            if found is None:
                raise KeyError(f"job {job_id!r} is not in the ledger; call start_job first")
            merged = {**json.loads(found[0] or "{}"), **dict(detail or {})}
            cur.execute(
                "UPDATE jobs SET exit_status = :exit_status, finished_unix = :finished_unix,"
                " steps = COALESCE(:steps, steps), tokens = COALESCE(:tokens, tokens),"
                " mfu = COALESCE(:mfu, mfu), detail = :detail,"
                " first_step_unix = COALESCE(first_step_unix, (SELECT MIN(a.first_step_unix)"
                " FROM attempts a WHERE a.job_id = :job_id))"
                " WHERE job_id = :job_id",
                {
                    "job_id": job_id,
                    "exit_status": exit_status,
                    "finished_unix": time.time() if finished_unix is None else finished_unix,
                    "steps": steps,
                    "tokens": tokens,
                    "mfu": mfu,
                    "detail": _json(merged),
                },
            )

    def add_samples(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert utilisation samples (``UtilSampler`` dicts); returns how many."""
        columns = ("job_id", "cluster", "node", "device", "unix", *SAMPLE_METRICS)
        params = [{c: row.get(c, "" if c == "device" else None) for c in columns} for row in rows]
        if not params:
            return 0
        with self._write() as cur:
            cur.executemany(
                f"INSERT INTO samples ({', '.join(columns)})"
                f" VALUES ({', '.join(':' + c for c in columns)})",
                params,
            )
        return len(params)

    def add_idle_span(
        self,
        cluster: str,
        node: str,
        start_unix: float,
        end_unix: float,
        mean_util_pct: float | None,
        device: str = "",
    ) -> None:
        with self._write() as cur:
            cur.execute(
                "INSERT INTO idle_spans (cluster, node, device, start_unix, end_unix,"
                " mean_util_pct) VALUES (:cluster, :node, :device, :start, :end, :mean)",
                {
                    "cluster": cluster,
                    "node": node,
                    "device": device,
                    "start": start_unix,
                    "end": end_unix,
                    "mean": mean_util_pct,
                },
            )

    def prune_samples(self, older_than_s: float, now_unix: float | None = None) -> int:
        """Fold samples older than ``older_than_s`` into ``sample_aggregates`` (count, sum
        and max per job, node and device) and delete them; a watcher's samples (no job)
        also leave their busy time as ``busy_spans`` (at or above ``BUSY_FROM_PCT``), which
        the programme view reads for the past. Journal entries (``applied_ops``) older than
        ``OPS_KEPT_S`` go too. Returns the sample rows deleted."""
        from .sampler import busy_intervals

        now = time.time() if now_unix is None else now_unix
        cutoff = now - older_than_s
        metric_sql = ", ".join(
            f"COUNT({m}) AS {m}_n, CAST(COALESCE(SUM({m}), 0) AS DOUBLE PRECISION) AS {m}_sum,"
            f" MAX({m}) AS {m}_max"
            for m in SAMPLE_METRICS
        )
        with self._write() as cur:
            self._db.lock(cur, "prune")
            cur.execute(
                "SELECT * FROM samples WHERE job_id IS NULL AND unix < :cutoff"
                " ORDER BY cluster, node, device, unix",
                {"cutoff": cutoff},
            )
            watched = [_row(cur, raw) for raw in cur.fetchall()]
            cur.executemany(
                "INSERT INTO busy_spans (cluster, node, device, start_unix, end_unix)"
                " VALUES (:cluster, :node, :device, :start, :end)",
                [
                    {"cluster": c, "node": n, "device": d, "start": a, "end": b}
                    for c, n, d, a, b in _merged(busy_intervals(watched, BUSY_FROM_PCT))
                ],
            )
            cur.execute(
                "SELECT COALESCE(job_id, '') AS job_key, cluster, node, device, COUNT(*) AS n,"
                f" MIN(unix) AS first_unix, MAX(unix) AS last_unix, {metric_sql}"
                " FROM samples WHERE unix < :cutoff"
                " GROUP BY COALESCE(job_id, ''), cluster, node, device",
                {"cutoff": cutoff},
            )
            fresh = [_row(cur, raw) for raw in cur.fetchall()]
            for agg in fresh:
                cur.execute(
                    "SELECT * FROM sample_aggregates WHERE job_key = :job_key"
                    " AND cluster = :cluster AND node = :node AND device = :device",
                    agg,
                )
                raw = cur.fetchone()
                if raw is not None:
                    agg = _merge_aggregates(_row(cur, raw), agg)
                    cur.execute(
                        "DELETE FROM sample_aggregates WHERE job_key = :job_key"
                        " AND cluster = :cluster AND node = :node AND device = :device",
                        agg,
                    )
                cur.execute(
                    f"INSERT INTO sample_aggregates ({', '.join(agg)})"
                    f" VALUES ({', '.join(':' + k for k in agg)})",
                    agg,
                )
            cur.execute("DELETE FROM samples WHERE unix < :cutoff", {"cutoff": cutoff})
            deleted = max(cur.rowcount, 0)
            cur.execute("DELETE FROM applied_ops WHERE unix < :t", {"t": now - OPS_KEPT_S})
            return deleted

    def allocate(
        self,
        *,
        project: str,
        cluster: str,
        gpu_type: str,
        gpus: int,
        start_unix: float,
        end_unix: float,
        provider: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> str:
        """Record what the programme granted: ``gpus`` of ``gpu_type`` on ``cluster`` to
        ``project`` from ``start_unix`` to ``end_unix``. The id follows from those fields,
        so recording the same grant again (a CSV imported twice) updates it."""
        if not end_unix > start_unix or int(gpus) < 1:
            raise ValueError("an allocation needs gpus >= 1 and end after start")
        key = "|".join(
            map(str, (provider, cluster, gpu_type, project, float(start_unix), float(end_unix)))
        )
        allocation_id = "alloc-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        with self._write() as cur:
            cur.execute(
                "INSERT INTO allocations (allocation_id, provider, cluster, gpu_type, project,"
                " gpus, start_unix, end_unix, detail) VALUES (:id, :provider, :cluster,"
                " :gpu_type, :project, :gpus, :start, :end, :detail)"
                " ON CONFLICT (allocation_id) DO UPDATE SET gpus = excluded.gpus,"
                " detail = excluded.detail",
                {
                    "id": allocation_id,
                    "provider": provider,
                    "cluster": cluster,
                    "gpu_type": gpu_type,
                    "project": project,
                    "gpus": int(gpus),
                    "start": float(start_unix),
                    "end": float(end_unix),
                    "detail": _json(detail),
                },
            )
        return allocation_id

    def unique_job_id(self, base: str) -> str:
        """``base``, or ``base-2``, ``base-3`` ... when a job of that id is already recorded
        (a relaunch into the same run directory is a new allocation)."""
        candidate, n = base, 1
        while self.job(candidate) is not None:
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def apply(self, op: Mapping[str, Any]) -> str | None:
        """Run one journaled write exactly once; returns its result (a started job's id).

        ``op``: ``{"id", "method", "kwargs"}`` and, for a job's writes, ``"job"``: the id of
        the ``start_job`` op that began the job, whose result is the job id. A
        ``start_job`` op's ``kwargs["job_id"]`` is the base id, made unique here."""
        method = op["method"]
        if method not in JOURNALED:
            raise ValueError(f"op {op.get('id')!r}: {method!r} is not a journaled write")
        kwargs = dict(op.get("kwargs") or {})
        with self._write() as cur:
            cur.execute("SELECT result FROM applied_ops WHERE op_id = :id", {"id": op["id"]})
            done = cur.fetchone()
            if done is not None:
                return done[0]
            result = None
            if method == "start_job":
                self._db.lock(cur, f"job:{kwargs['job_id']}")  # two clusters, one base id
                result = kwargs["job_id"] = self.unique_job_id(kwargs["job_id"])
            elif op.get("job"):
                cur.execute("SELECT result FROM applied_ops WHERE op_id = :id", {"id": op["job"]})
                started = cur.fetchone()
                if started is None:
                    raise KeyError(f"op {op['id']!r}: its job's start {op['job']!r} is not applied")
                if method == "add_samples":
                    kwargs["rows"] = [{**row, "job_id": started[0]} for row in kwargs["rows"]]
                else:
                    kwargs["job_id"] = started[0]
            found = getattr(self, method)(**kwargs)
            if method == "allocate":
                result = found
            cur.execute(
                "INSERT INTO applied_ops (op_id, result, unix) VALUES (:id, :result, :unix)",
                {"id": op["id"], "result": result, "unix": time.time()},
            )
        return result

    # ---- reading -------------------------------------------------------------------

    def _select(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        cur = self._db.read()
        cur.execute(sql, dict(params or {}))
        return [_row(cur, raw) for raw in cur.fetchall()]

    def jobs(
        self,
        project: str | None = None,
        since_unix: float | None = None,
        cluster: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs (oldest first), optionally of one project/cluster, started at or after
        ``since_unix``."""
        where, params = _filters(project=project, cluster=cluster)
        if since_unix is not None:
            where.append("started_unix >= :since")
            params["since"] = since_unix
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(f"SELECT * FROM jobs{clause} ORDER BY started_unix, job_id", params)

    def job(self, job_id: str) -> dict[str, Any] | None:
        found = self._select("SELECT * FROM jobs WHERE job_id = :j", {"j": job_id})
        return found[0] if found else None

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return self._select(
            "SELECT * FROM attempts WHERE job_id = :j ORDER BY attempt", {"j": job_id}
        )

    def attempts_of(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """``attempts`` of many jobs in one query (a report of thousands of jobs)."""
        return self._by_job("attempts", "attempt", job_ids)

    def events_of(self, job_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """``events`` of many jobs in one query."""
        return self._by_job("events", "unix", job_ids)

    def _by_job(self, table: str, order: str, job_ids: Iterable[str]) -> dict[str, list[dict]]:
        wanted = set(job_ids)
        found: dict[str, list[dict[str, Any]]] = {j: [] for j in wanted}
        for row in self._select(f"SELECT * FROM {table} ORDER BY job_id, {order}"):
            if row["job_id"] in wanted:
                found[row["job_id"]].append(row)
        return found

    def events(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        where, params = _filters(kind=kind)
        where.append("job_id = :job_id")
        params["job_id"] = job_id
        return self._select(
            f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY unix", params
        )

    def samples(
        self,
        cluster: str | None = None,
        node: str | None = None,
        since_unix: float | None = None,
        until_unix: float | None = None,
        job_id: str | None = None,
    ) -> list[dict[str, Any]]:
        where, params = _filters(cluster=cluster, node=node, job_id=job_id)
        if since_unix is not None:
            where.append("unix >= :since")
            params["since"] = since_unix
        if until_unix is not None:
            where.append("unix <= :until")
            params["until"] = until_unix
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT * FROM samples{clause} ORDER BY cluster, node, device, unix", params
        )

    def busy_spans(self) -> list[dict[str, Any]]:
        """Busy time of watched devices whose samples were pruned (see ``prune_samples``)."""
        return self._select("SELECT * FROM busy_spans ORDER BY cluster, node, device, start_unix")

    def watcher_samples(self, since_unix: float | None = None) -> list[dict[str, Any]]:
        """Samples of no job: what ``gosok ledger watch`` saw on the nodes."""
        where, params = ["job_id IS NULL"], {}
        if since_unix is not None:
            where.append("unix >= :since")
            params["since"] = since_unix
        return self._select(
            f"SELECT * FROM samples WHERE {' AND '.join(where)}"
            " ORDER BY cluster, node, device, unix",
            params,
        )

    def sample_aggregates(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Per job (``job_key``, ``""`` for none), node and device totals of pruned samples."""
        where, params = _filters(job_key=job_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT * FROM sample_aggregates{clause} ORDER BY job_key, cluster, node, device",
            params,
        )

    def attempt_counts(self) -> list[dict[str, Any]]:
        """Ended attempts per project, cluster, GPU type and cause."""
        return self._select(
            "SELECT j.project, j.cluster, j.gpu_type, a.cause, COUNT(*) AS n"
            " FROM attempts a JOIN jobs j ON j.job_id = a.job_id WHERE a.cause IS NOT NULL"
            " GROUP BY j.project, j.cluster, j.gpu_type, a.cause"
            " ORDER BY j.project, j.cluster, j.gpu_type, a.cause"
        )

    def idle_spans(
        self, cluster: str | None = None, since_unix: float | None = None
    ) -> list[dict[str, Any]]:
        where, params = _filters(cluster=cluster)
        if since_unix is not None:
            where.append("end_unix >= :since")
            params["since"] = since_unix
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT * FROM idle_spans{clause} ORDER BY cluster, node, device, start_unix",
            params,
        )

    def allocations(
        self, cluster: str | None = None, project: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = _filters(cluster=cluster, project=project)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT * FROM allocations{clause} ORDER BY provider, cluster, start_unix", params
        )


def _merged(
    intervals: Iterable[tuple[str, str, str, float, float]],
) -> list[tuple[str, str, str, float, float]]:
    """Touching or overlapping intervals of one device as one."""
    out: list[tuple[str, str, str, float, float]] = []
    for c, n, d, a, b in sorted(intervals):
        if out and out[-1][:3] == (c, n, d) and a <= out[-1][4]:
            out[-1] = (c, n, d, out[-1][3], max(out[-1][4], b))
        else:
            out.append((c, n, d, a, b))
    return out


def _filters(**equal: Any) -> tuple[list[str], dict[str, Any]]:
    where = [f"{column} = :{column}" for column, value in equal.items() if value is not None]
    return where, {c: v for c, v in equal.items() if v is not None}


def _merge_aggregates(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(new)
    merged["n"] = old["n"] + new["n"]
    merged["first_unix"] = min(old["first_unix"], new["first_unix"])
    merged["last_unix"] = max(old["last_unix"], new["last_unix"])
    for m in SAMPLE_METRICS:
        merged[f"{m}_n"] = old[f"{m}_n"] + new[f"{m}_n"]
        merged[f"{m}_sum"] = old[f"{m}_sum"] + new[f"{m}_sum"]
        highs = [v for v in (old[f"{m}_max"], new[f"{m}_max"]) if v is not None]
        merged[f"{m}_max"] = max(highs) if highs else None
    return merged


def _upgrade(db: Any) -> None:
    if db.schema_version() == SCHEMA_VERSION:
        return
    with db.write() as cur:
        db.lock_schema(cur)
        version = db.schema_version(cur)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"ledger {db.path} has schema version {version}, newer than this gosok "
                f"({SCHEMA_VERSION}); upgrade gosok to read it"
            )
        if version == 0:
            if db.has_ledger(cur):
                raise RuntimeError(
                    f"{db.path}: has tables but no schema version; not a gosok ledger"
                )
            # A new file is built as version 1 and migrated, so new and upgraded files
            # come from the same statements and cannot drift apart.
            _create_v1(cur)
            version = 1
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](cur)
            version += 1
        db.set_schema_version(cur, version)
