"""The goodput ledger fed by real ``gosok launch`` runs on local Ray clusters: a recipe job
and its report (HTML and CSV agree), an idle span flagged while a script sleeps, and a job
whose node is killed mid-run (two attempts, the restart cause, lost steps, goodput below 1
that the recorded timings account for).

The first two reuse the session's cluster; the node kill needs a cluster of its own.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.goodput import breakdown
from gosok.launcher.ledger.report import goodput_text
from tests.conftest import cluster_config, run_gosok
from tests.integration.launch.launch_helpers import kill_node, read_json, wait_for

RECIPE = ["job=recipe", "job.strategy=ddp", "logger=none", "cluster.nodes=2",
          "cluster.gpus_per_node=2", "checkpoint.every_steps=10"]  # fmt: skip


def report(ledger: Path, out: Path, project: str) -> tuple[dict[str, str], str]:
    """``gosok ledger report``'s only CSV row and its HTML."""
    run = run_gosok("ledger", "report", "--ledger", str(ledger), "--project", project,
                    "--out-dir", str(out), timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with open(out / "ledger.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    return row, (out / "ledger.html").read_text()


def the_job(path: Path) -> tuple[dict, list[dict], list[dict], list[dict]]:
    with Ledger.open(path) as ledger:
        (job,) = ledger.jobs()
        job_id = job["job_id"]
        return job, ledger.attempts(job_id), ledger.events(job_id), ledger.samples(job_id=job_id)


def test_recipe_job_is_recorded_and_reported(ray_cluster, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    run_dir = tmp_path / "run"
    run = run_gosok(
        "launch", *RECIPE, "job.steps=20", f"ledger.path={ledger}", "ledger.project=demo",
        "ledger.sample_interval_s=1", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ledger:" not in run.stdout  # no recording error was printed
    metrics = read_json(run_dir / "result.json")
    job, attempts, events, samples = the_job(ledger)
    assert job["project"] == "demo" and job["cluster"] == "local" and job["gpu_type"] == "cpu"
    assert (job["nodes"], job["gpus"], job["exit_status"], job["steps"]) == (2, 4, "ok", 20)
    assert job["tokens"] == 20 * 4 * 8 * 32  # steps x world x micro batch x sequence length
    assert job["mfu"] == metrics["mfu"]
    (attempt,) = attempts
    assert attempt["cause"] == "ok" and attempt["resumed_from_step"] == 0
    assert job["started_unix"] < attempt["first_step_unix"] < attempt["last_step_unix"]
    assert attempt["last_step_unix"] <= job["finished_unix"]
    assert [e["detail"]["step"] for e in events] == [10, 20]
    assert all(0 < e["seconds"] < 60 for e in events)
    assert len({s["node"] for s in samples}) == 2  # local rank 0 of each node sampled

    row, html = report(ledger, tmp_path / "report", "demo")
    goodput, cpu_hours = float(row["goodput"]), float(row["cpu_hours"])
    assert 0 < goodput <= 1 and cpu_hours > 0
    assert row["job_id"] == job["job_id"] and row["attempts"] == "1" and row["steps"] == "20"
    assert goodput_text(goodput) in html and f"{cpu_hours:.2f} CPU-hours" in html
    assert math.isclose(goodput, breakdown(job, attempts, events).goodput, abs_tol=1e-4)


SLEEPER = """
import time
from gosok.launcher.ranks.heartbeat import beat
beat(1)
time.sleep(5)
beat(2)
"""


def test_idle_span_is_flagged_while_a_job_sleeps(ray_cluster, tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    ledger = tmp_path / "ledger.sqlite"
    # Each node's sampler measures the CPU share of the job's own ranks there, so the busy
    # host around them does not matter. Fresh rank processes (executed by the zygote).
    run = run_gosok(
        "launch", "job=script", "job.script=sleeper.py", "logger=none",
        "launch.fresh_process=true", f"ledger.path={ledger}", "ledger.project=idle",
        "ledger.sample_interval_s=0.2", "ledger.idle_for_s=1", "ledger.idle_below=5",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    job, _, _, samples = the_job(ledger)
    with Ledger.open(ledger) as opened:
        spans = opened.idle_spans(cluster="local")
    assert spans, f"no idle span among {len(samples)} samples"
    assert {s["node"] for s in spans} <= {s["node"] for s in samples}
    for span in spans:
        assert span["end_unix"] - span["start_unix"] >= 1.0
        assert job["started_unix"] <= span["start_unix"] <= job["finished_unix"]
    row, html = report(ledger, tmp_path / "report", "idle")
    assert float(row["idle_device_s"]) > 0
    assert "(device time) on its cluster" in html


def test_node_killed_mid_run_costs_goodput(ray_cluster, tmp_path):
    cfg = cluster_config(name="ledgerkill", nodes=3)
    state = local_cluster.start(cfg)
    try:
        ledger = tmp_path / "ledger.sqlite"
        run_dir = tmp_path / "run"
        with open(tmp_path / "killed.out", "w+") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gosok.launcher.cli", "launch", *RECIPE,
                 "cluster.name=ledgerkill", "job.steps=40", "job.micro_batch=128",
                 f"ledger.path={ledger}", "ledger.project=faults", f"hydra.run.dir={run_dir}"],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            manifest = run_dir / "checkpoints" / "manifest.json"
            wait_for(
                lambda: (read_json(manifest) or {}).get("latest_step", 0) >= 10,
                240,
                "the step-10 checkpoint",
            )
            # A few steps past it (about 0.2 s each here), so the restart redoes work.
            time.sleep(1.5)
            placement = read_json(run_dir / "logs" / "attempt-0" / "placement.json")
            sessions = {os.getsid(p["actor_pid"]): p["node_id"] for p in placement["placement"]}
            victim = next(s for s in sessions if s != state.pgids[0])  # never the head
            assert kill_node(victim) > 0
            proc.wait(timeout=300)
            out.seek(0)
            assert proc.returncode == 0, out.read()[-4000:]
    finally:
        local_cluster.stop(cfg.name)

    job, attempts, events, _ = the_job(ledger)
    first, second = attempts
    assert first["cause"] in ("node_lost", "worker_lost") and second["cause"] == "ok"
    resumed = second["resumed_from_step"]
    assert 10 <= resumed < first["last_step"]  # steps lost to the restart
    assert job["exit_status"] == "ok" and job["steps"] == 40

    parts = breakdown(job, attempts, events)
    assert 0 < parts.goodput < 1 and parts.restart_downtime > 0
    # The parts follow from the recorded times.
    saving = sum(e["seconds"] for e in events if e["detail"]["attempt"] == 0)
    stepping = first["last_step_unix"] - first["first_step_unix"] - saving
    redone = first["last_step"] - resumed
    assert math.isclose(parts.lost_work, stepping / first["last_step"] * redone, rel_tol=1e-9)
    assert math.isclose(parts.startup, first["first_step_unix"] - job["started_unix"])
    downtime = second["first_step_unix"] - first["last_step_unix"]
    assert math.isclose(parts.restart_downtime, downtime)
    assert math.isclose(parts.idle_tail, job["finished_unix"] - second["last_step_unix"])
    assert math.isclose(parts.checkpoint, sum(e["seconds"] for e in events))

    row, _ = report(ledger, tmp_path / "report", "faults")
    assert row["attempts"] == "2"
    assert math.isclose(float(row["goodput"]), parts.goodput, abs_tol=1e-4)
    assert math.isclose(float(row["lost_work_s"]), parts.lost_work, abs_tol=1e-3)
