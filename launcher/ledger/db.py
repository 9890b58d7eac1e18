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

``Ledger.open(path)`` takes a file path, ``sqlite:///relative/path`` or
``sqlite:////absolute/path`` (SQLAlchemy's spelling, so one URL means the same file
everywhere). A server URL such as ``postgresql://`` is refused with a ``ValueError``: a
central ledger needs SQLAlchemy and a driver, which are not built in (see README.md here).

Concurrency: WAL journal, a busy timeout, and write transactions that take the write lock
up front, so processes wait for each other instead of failing. The file must be on a local
disk (WAL needs shared memory; NFS is not safe).

Schema: ``PRAGMA user_version`` holds the version. An older file is upgraded in place one
step at a time (``MIGRATIONS``), keeping its rows; a file newer than this code is refused.
Version 1 had no ``samples``/``sample_aggregates`` tables, no ``jobs.tokens``/``jobs.mfu``,
no ``attempts.last_step_unix`` and no ``idle_spans.device``.

SQL is parameterised and portable (``:name`` placeholders, ``ON CONFLICT ... DO UPDATE``,
``DOUBLE PRECISION``); the SQLite-only statements (PRAGMAs, ``BEGIN IMMEDIATE``,
``sqlite_master``) live in ``_SqliteConnection`` alone.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCHEMA_VERSION = 2
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


# MIGRATIONS[n] upgrades a version-n file to version n + 1.
MIGRATIONS = {1: _migrate_1_to_2}


def _create_v1(cur: Any) -> None:
    for statement in V1_DDL:
        cur.execute(statement)


_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def default_ledger_path() -> Path:
    """``$XDG_DATA_HOME/gosok/ledger.sqlite``, else ``~/.local/share/gosok/ledger.sqlite``."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "gosok" / "ledger.sqlite"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def resolve_ledger_path(value: str | os.PathLike[str] | None) -> Path | str:
    """The SQLite file a ``ledger.path`` value names (``":memory:"`` passes through).

    ``None`` or ``""`` means the default path. ``sqlite:///x`` is ``x`` relative to the
    working directory and ``sqlite:////x`` is ``/x``, as in SQLAlchemy. Any other URL
    scheme raises ``ValueError``.
    """
    if value is None or str(value) == "":
        return default_ledger_path()
    text = os.fspath(value)
    match = _URL_SCHEME.match(text)
    if not match:
        return text if text == ":memory:" else Path(text).expanduser()
    scheme = match.group(1).lower()
    if scheme != "sqlite" and not scheme.startswith("sqlite+"):
        raise ValueError(
            f"ledger.path {_redacted(text)!r}: a central {scheme.split('+')[0]} ledger needs "
            "SQLAlchemy and a database driver, which gosok does not build in; use a local "
            "SQLite file (a path, sqlite:///relative/path or sqlite:////absolute/path)"
        )
    rest = text[match.end() :]
    if rest == "":
        return ":memory:"
    if not rest.startswith("/") or "?" in rest:
        raise ValueError(
            f"ledger.path {text!r}: a SQLite URL is sqlite:///relative/path or "
            "sqlite:////absolute/path, without a host or ?query"
        )
    rest = rest[1:]
    if rest in ("", ":memory:"):
        return ":memory:"
    return Path(rest).expanduser()


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(value or {}), sort_keys=True, default=str)


def _row(cur: Any, raw: tuple) -> dict[str, Any]:
    row = {d[0]: v for d, v in zip(cur.description, raw, strict=True)}
    if isinstance(row.get("detail"), str):
        row["detail"] = json.loads(row["detail"])
    return row


class _SqliteConnection:
    """The only place with SQLite-specific statements: pragmas and locking."""

    def __init__(self, path: Path | str, timeout_s: float) -> None:
        self.path = path
        if isinstance(path, Path) and path == default_ledger_path():
            from gosok.launcher.ranks.private import own_dir

            own_dir(path.parent)  # this user's only, checked on every open
        elif isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        deadline = time.monotonic() + timeout_s
        while True:
            # Switching to WAL needs a moment of exclusive access, which the busy
            # handler does not always wait for when several processes open a new file.
            try:
                self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def user_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def set_user_version(self, cur: Any, version: int) -> None:
        cur.execute(f"PRAGMA user_version = {int(version)}")

    def has_tables(self, cur: Any) -> bool:
        cur.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        return bool(cur.fetchone()[0])

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A transaction holding the write lock from its start, so a read-then-write
        cannot fail halfway when another process wrote in between."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def read(self) -> Any:
        return self.conn.cursor()

    def close(self) -> None:
        self.conn.close()


class Ledger:
    """Jobs, attempts, events, utilisation samples and idle spans in one SQLite file.

    Times are unix seconds (float). Methods that take ``unix=None`` use ``time.time()``.
    """

    def __init__(self, db: _SqliteConnection, path: Path | str) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, timeout_s: float = 30.0) -> Ledger:
        """Open (creating or upgrading) the ledger at ``path``; see ``resolve_ledger_path``."""
        resolved = resolve_ledger_path(path)
        db = _SqliteConnection(resolved, timeout_s)
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
        return self._db.user_version()

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
        with self._db.write() as cur:
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
        with self._db.write() as cur:
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
        with self._db.write() as cur:
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
        with self._db.write() as cur:
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
        with self._db.write() as cur:
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
        with self._db.write() as cur:
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
        and max per job, node and device) and delete them; returns rows deleted."""
        cutoff = (time.time() if now_unix is None else now_unix) - older_than_s
        metric_sql = ", ".join(
            f"COUNT({m}) AS {m}_n, COALESCE(SUM({m}), 0) AS {m}_sum, MAX({m}) AS {m}_max"
            for m in SAMPLE_METRICS
        )
        with self._db.write() as cur:
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
            return max(cur.rowcount, 0)

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

    def sample_aggregates(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Per job (``job_key``, ``""`` for none), node and device totals of pruned samples."""
        where, params = _filters(job_key=job_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT * FROM sample_aggregates{clause} ORDER BY job_key, cluster, node, device",
            params,
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


def _upgrade(db: _SqliteConnection) -> None:
    if db.user_version() == SCHEMA_VERSION:
        return
    with db.write() as cur:
        version = db.user_version()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"ledger {db.path} has schema version {version}, newer than this gosok "
                f"({SCHEMA_VERSION}); upgrade gosok to read it"
            )
        if version == 0:
            if db.has_tables(cur):
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
        db.set_user_version(cur, version)
