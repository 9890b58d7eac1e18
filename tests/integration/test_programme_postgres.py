"""The programme's ledger end to end on a real PostgreSQL server: two local clusters launch
at once into one ledger, the server is killed and restarted while they run, an allocation
per cluster began two hours before the jobs (an idle stretch). Every write arrives;
``gosok ledger report --programme`` shows both clusters with allocated = productive +
overhead + idle and the stretch flagged; ``gosok ledger serve`` is scraped and parsed with
Prometheus' parser, and the Grafana dashboard's queries name only what it serves."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from prometheus_client.parser import text_string_to_metric_families

from gosok.launcher.ledger.db import Ledger
from tests.conftest import run_gosok
from tests.unit.test_deploy_ledger import dashboard_metrics

STEPS = 40
SAVE_EVERY = 10
SCRIPT = f"""
import time
from gosok.launcher.ranks.heartbeat import beat
saves = []
for step in range(1, {STEPS} + 1):
    time.sleep(0.25)
    if step % {SAVE_EVERY} == 0:
        saves.append([step, time.time(), 0.05])
    beat(step, checkpoints=len(saves), checkpoint_s=0.05 * len(saves), checkpoint_log=saves)
"""
CLUSTERS = ("proga", "progb")


def _launch(name: str, url: str, tmp_path, env: dict[str, str]) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "gosok.launcher.cli", "launch", "cluster=local",
        f"cluster.name={name}", "cluster.nodes=1", "cluster.gpus_per_node=2", "job=script",
        "job.script=steps.py", "logger=none", f"ledger.path={url}", "ledger.project=prog",
        "ledger.sample_interval_s=0.5", f"hydra.run.dir={tmp_path / name}",
    ]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _jobs(url: str) -> list[dict]:
    try:
        with Ledger.open(url, timeout_s=2) as ledger:
            return ledger.jobs()
    except Exception:
        return []


def test_two_clusters_one_ledger_a_server_restart_and_the_programme_view(
    postgres, pg_url, tmp_path
):
    (tmp_path / "steps.py").write_text(SCRIPT)
    env = {**os.environ, **postgres.env, "GOSOK_STATE_DIR": str(tmp_path / "state")}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    end = datetime.now(timezone.utc) + timedelta(hours=1)
    for name in CLUSTERS:
        granted = run_gosok(
            "ledger", "allocate", "--ledger", pg_url, "--project", "prog", "--cluster", name,
            "--provider", f"cloud-{name[-1]}", "--gpu-type", "cpu", "--gpus", "2",
            "--from", f"{start:%Y-%m-%dT%H:%M}", "--to", f"{end:%Y-%m-%dT%H:%M}", env=env,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stdout + granted.stderr

    procs = [_launch(name, pg_url, tmp_path, env) for name in CLUSTERS]
    deadline = time.monotonic() + 240
    while len([j for j in _jobs(pg_url) if j["kind"] == "launch"]) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.5)
    postgres.stop("immediate")  # both jobs are running: the server goes away
    time.sleep(3.0)
    postgres.start_again()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert postgres.env["PGPASSWORD"] not in out
    assert any("cannot reach" in out for out in outputs), outputs[0][-2000:]

    with Ledger.open(pg_url) as ledger:
        jobs = {j["cluster"]: j for j in ledger.jobs()}
        assert set(jobs) == set(CLUSTERS)
        for job in jobs.values():
            (attempt,) = ledger.attempts(job["job_id"])
            assert job["exit_status"] == "ok" and attempt["cause"] == "ok"
            assert attempt["last_step"] == STEPS
            saved = [e["detail"]["step"] for e in ledger.events(job["job_id"], "checkpoint")]
            assert saved == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
            assert ledger.samples(job_id=job["job_id"])

    out = tmp_path / "programme"
    report = run_gosok(
        "ledger", "report", "--programme", "--ledger", pg_url, "--out-dir", str(out), env=env
    )
    assert report.returncode == 0, report.stdout + report.stderr
    for name in CLUSTERS:
        assert f"IDLE STRETCH {name}/prog" in report.stdout
    with open(out / "programme.csv", newline="") as handle:
        rows = {r["cluster"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(CLUSTERS)
    for row in rows.values():
        hours = {k: float(row[f"{k}_hours"]) for k in
                 ("allocated", "used", "productive", "idle", "overhead")}  # fmt: skip
        assert hours["allocated"] > 2 * 2 - 0.1  # two GPUs for two hours and more
        assert 0 < hours["productive"] <= hours["used"] < hours["allocated"]
        total = hours["productive"] + hours["overhead"] + hours["idle"]
        assert math.isclose(total, hours["allocated"], rel_tol=1e-4)

    serve = subprocess.Popen(
        [sys.executable, "-m", "gosok.launcher.cli", "ledger", "serve", "--ledger", pg_url,
         "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = serve.stdout.readline()
        assert "/metrics" in line, line
        with urllib.request.urlopen(line.split()[-1], timeout=30) as answer:
            text = answer.read().decode()
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    served = {s.name for s in samples}
    assert dashboard_metrics() <= served, dashboard_metrics() - served
    allocated = {
        s.labels["cluster"]: s.value
        for s in samples
        if s.name == "gosok_gpu_hours_total" and s.labels["state"] == "allocated"
    }
    assert set(allocated) == set(CLUSTERS) and min(allocated.values()) > 3.9
    up = [s.value for s in samples if s.name == "gosok_ledger_up"]
    assert up == [1.0]
