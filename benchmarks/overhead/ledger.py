"""The programme's ledger under load: concurrent writers, the buffered writer, and one
Prometheus scrape of a programme-sized ledger; SQLite and PostgreSQL side by side.

Run: ``python -m gosok.benchmarks.overhead.ledger [--postgres postgresql://user@host/db]
[--writers 4] [--ops 400] [--jobs 2000]`` (the password from PGPASSWORD/PGPASSFILE; the
user must be allowed to create databases: each part gets a new one beside the URL's).
Writes JSON (``--out``, default benchmarks/results/cpu/ledger.json).

1. Concurrent writers: ``--writers`` processes (forked, released together by a barrier)
   each start a job and apply ``--ops`` journaled ops in the launch recorder's mix (attempt
   updates, checkpoint events, batches of 8 utilisation samples) through ``Ledger.apply``
   (exactly-once bookkeeping included). Per op: wall time around ``apply``; aggregate:
   ops over the slowest writer's wall time.
2. The buffered writer (``LedgerWriter``), one process: time from ``op()`` to the op being
   applied (its result visible) while the ledger answers, p50/p99 over ``--ops`` ops; and,
   with the ledger away (a closed local port), ops buffered on disk per second (each line
   fsynced), measured until the last op is in the buffer.
Durability differs and is part of the figures: SQLite runs as gosok opens it (WAL,
``synchronous=NORMAL``: a commit is not fsynced, the WAL is at checkpoints), PostgreSQL as
its server is configured (recorded under ``postgresql_server``: fsync, synchronous_commit).

3. One scrape: a ledger holding ``--jobs`` finished jobs (two attempts, two checkpoint
   events each) over 7 providers x 3 clusters x 4 projects with an allocation each; wall
   time of ``metrics.render`` (the programme view, every job's goodput breakdown, attempt
   counts) and of ``report.write_programme``, median of 3.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gosok.benchmarks.overhead.rounds import facts
from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.metrics import render
from gosok.launcher.ledger.report import write_programme
from gosok.launcher.ledger.writer import LedgerWriter, read_spool
from gosok.launcher.results.store import write_results

OUT = Path(__file__).resolve().parents[1] / "results" / "cpu" / "ledger.json"
# Two attempts per job (seconds from its start): a node lost at 1800 s, then a resume.
ATTEMPTS = (
    (0, 60, 120, 1800, "node_lost", 900, None, 1790),
    (1, 1830, 1900, 3500, "ok", 2000, 800, 3500),
)


def _ops(writer: int, count: int) -> list[dict[str, Any]]:
    start = f"w{writer}-start-{uuid.uuid4().hex[:6]}"
    ops = [
        {
            "id": start,
            "method": "start_job",
            "kwargs": {"job_id": f"bench-w{writer}", "cluster": f"c{writer % 3}", "gpus": 8},
        }
    ]
    for i in range(count):
        base = {"id": f"{start}-{i}", "job": start}
        if i % 3 == 0:
            ops.append(
                base
                | {
                    "method": "record_attempt",
                    "kwargs": {"attempt": 0, "last_step": i, "last_step_unix": float(i)},
                }
            )
        elif i % 3 == 1:
            ops.append(
                base
                | {
                    "method": "record_event",
                    "kwargs": {"kind": "checkpoint", "seconds": 0.5, "unix": float(i)},
                }
            )
        else:
            rows = [
                {
                    "cluster": f"c{writer % 3}",
                    "node": f"n{writer}",
                    "device": f"gpu{d}",
                    "unix": float(i),
                    "gpu_util_pct": 90.0,
                }
                for d in range(8)
            ]
            ops.append(base | {"method": "add_samples", "kwargs": {"rows": rows}})
    return ops


def _writer(url: str, writer: int, count: int, barrier: Any, out: Any) -> None:
    ops = _ops(writer, count)
    with Ledger.open(url) as ledger:
        barrier.wait()
        began = time.perf_counter()
        times = []
        for op in ops:
            t = time.perf_counter()
            ledger.apply(op)
            times.append(time.perf_counter() - t)
        out.put((writer, time.perf_counter() - began, times))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def concurrent_writers(url: str, writers: int, count: int) -> dict[str, Any]:
    Ledger.open(url).close()  # created (or migrated) before the clock starts
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(url, w, count, barrier, out)) for w in range(writers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    latencies = [t for _, _, times in results for t in times]
    slowest = max(wall for _, wall, _ in results)
    return {
        "writers": writers,
        "ops": len(latencies),
        "ops_per_s": len(latencies) / slowest,
        "apply_p50_ms": 1e3 * statistics.median(latencies),
        "apply_p99_ms": 1e3 * _percentile(latencies, 0.99),
    }


def buffered_writer(url: str, count: int) -> dict[str, Any]:
    writer = LedgerWriter(url, say=lambda _: None)
    start = writer.op("start_job", job_id="bench-buffered", gpus=8)
    lags = []
    for i in range(count):
        sent = time.perf_counter()
        op = writer.op("record_event", job=start, kind="checkpoint", seconds=0.5, unix=float(i))
        while not writer.applied(op):
            time.sleep(0.0002)
        lags.append(time.perf_counter() - sent)
    writer.close()
    return {
        "ops": count,
        "op_to_applied_p50_ms": 1e3 * statistics.median(lags),
        "op_to_applied_p99_ms": 1e3 * _percentile(lags, 0.99),
    }


def away_writer(count: int) -> dict[str, Any]:
    said: list[str] = []
    writer = LedgerWriter("postgresql://bench@127.0.0.1:1/none", say=said.append)
    began = time.perf_counter()
    start = writer.op("start_job", job_id="bench-away", gpus=8)
    for i in range(count):
        writer.op("record_event", job=start, kind="checkpoint", seconds=0.5, unix=float(i))
    writer.close(timeout_s=0.0)
    elapsed = time.perf_counter() - began
    kept = writer.kept
    buffered = len(read_spool(kept)[1]) if kept else 0
    if kept:
        kept.unlink()
    return {"ops": count + 1, "buffered": buffered, "buffered_per_s": buffered / elapsed}


def fill(url: str, jobs: int) -> None:
    providers, clusters, projects = 7, 3, 4
    with Ledger.open(url) as ledger:
        for p in range(providers):
            for c in range(clusters):
                for q in range(projects):
                    ledger.allocate(
                        project=f"proj{q}",
                        cluster=f"p{p}-c{c}",
                        provider=f"prov{p}",
                        gpu_type="H200",
                        gpus=64,
                        start_unix=0.0,
                        end_unix=30 * 86400.0,
                    )
        for j in range(jobs):
            job_id, t0 = f"job-{j}", 3600.0 * (j % 500)
            cluster = f"p{j % providers}-c{j % clusters}"
            ledger.start_job(
                job_id,
                project=f"proj{j % projects}",
                cluster=cluster,
                gpu_type="H200",
                nodes=2,
                gpus=16,
                started_unix=t0,
            )
            for number, start, first, end, cause, last, resumed, last_t in ATTEMPTS:
                ledger.record_attempt(
                    job_id,
                    number,
                    started_unix=t0 + start,
                    first_step_unix=t0 + first,
                    ended_unix=t0 + end,
                    cause=cause,
                    last_step=last,
                    resumed_from_step=resumed,
                    last_step_unix=t0 + last_t,
                )
            for k, when in enumerate((t0 + 900, t0 + 2700)):
                ledger.record_event(
                    job_id, "checkpoint", seconds=20.0, unix=when, detail={"step": 500 * (k + 1)}
                )
            ledger.finish_job(job_id, exit_status="ok", finished_unix=t0 + 3520, steps=2000)


def scrape(url: str, jobs: int) -> dict[str, Any]:
    fill(url, jobs)
    now = 40 * 86400.0
    renders, reports = [], []
    with Ledger.open(url) as ledger, tempfile.TemporaryDirectory() as out:
        for _ in range(3):
            t = time.perf_counter()
            text = render(ledger, now_unix=now)
            renders.append(time.perf_counter() - t)
            t = time.perf_counter()
            write_programme(ledger, out, now_unix=now)
            reports.append(time.perf_counter() - t)
    series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    return {
        "jobs": jobs,
        "allocations": 7 * 3 * 4,
        "series": series,
        "render_s": statistics.median(renders),
        "write_programme_s": statistics.median(reports),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=None, help="postgresql://user@host/db (empty db)")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_DATA_HOME"] = str(Path(tmp) / "data")  # the buffer of part 2
        targets = {"sqlite": lambda name: str(Path(tmp) / f"{name}.sqlite")}
        if args.postgres:
            targets["postgresql"] = lambda name: _database(args.postgres, name)
            results["postgresql_server"] = _server_settings(args.postgres)
        for backend, target in targets.items():
            print(f"{backend}: {args.writers} writers x {args.ops} ops ...", flush=True)
            results[backend] = {
                "concurrent_writers": concurrent_writers(target("writers"), args.writers, args.ops),
                "buffered_writer": buffered_writer(target("buffered"), args.ops),
                "scrape": scrape(target("scrape"), args.jobs),
            }
            print(json.dumps(results[backend], indent=1), flush=True)
        results["away"] = away_writer(args.ops)
        print(json.dumps(results["away"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_results(
        Path(args.out),
        {
            "kind": "ledger_load",
            "what": "the goodput ledger under load: concurrent writers, the buffered writer, "
            "one Prometheus scrape of a programme-sized ledger; SQLite and PostgreSQL",
            **facts(vars(args) | {"postgres": bool(args.postgres)}),
            "method": __doc__,
            "results": results,
        },
    )
    print(f"results: {args.out}")
    return 0


def _server_settings(url: str) -> dict[str, str]:
    """What the PostgreSQL figures depend on: the server's version and durability."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes",
                         "wal_sync_method", "shared_buffers")
        }  # fmt: skip


def _database(url: str, name: str) -> str:
    """A new database beside ``url``'s, made through it (each part starts empty)."""
    import psycopg

    base, _, _ = url.rpartition("/")
    database = f"gosok_bench_{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    return f"{base}/{database}"


if __name__ == "__main__":
    sys.exit(main())
