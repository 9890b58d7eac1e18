"""Recording launches and benchmark runs in the ledger without Ray: the ``ledger:`` config
checks, the supervisor observer fed with made-up heartbeats and outcomes, ``record_bench``,
and idle spans found batch by batch."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
from omegaconf import OmegaConf

from gosok.launcher.config.ledger_schema import LedgerConfig, validate_ledger
from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.goodput import breakdown
from gosok.launcher.ledger.recorder import LaunchRecorder, node_labels, record_bench
from gosok.launcher.ledger.sampler import IdleTracker, UtilSampler, idle_spans
from tests.conftest import assert_refused_clearly, run_refused

CLUSTER = SimpleNamespace(name="c1", gpu="cpu", nodes=2, gpus_per_node=2)


@pytest.fixture(autouse=True)
def private_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def settings(path, **overrides):
    return OmegaConf.merge(OmegaConf.structured(LedgerConfig(path=str(path))), overrides)


# ---- config -------------------------------------------------------------------------------


def test_defaults_and_good_values_pass(tmp_path):
    assert validate_ledger(OmegaConf.structured(LedgerConfig())) == []
    assert validate_ledger(settings(tmp_path / "new" / "dir" / "l.sqlite", project="랩 A")) == []
    assert validate_ledger(settings(f"sqlite:///{tmp_path}/l.sqlite")) == []


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"project": ""}, "ledger.project=''"),
        ({"project": " padded"}, "ledger.project=' padded'"),
        ({"project": "x" * 65}, "1-64 printable"),
        ({"project": "tab\there"}, "ledger.project="),
        ({"sample_interval_s": 0.0}, "ledger.sample_interval_s=0.0"),
        ({"sample_interval_s": math.nan}, "ledger.sample_interval_s=nan"),
        ({"idle_below": 0.0}, "ledger.idle_below=0.0"),
        ({"idle_below": 101.0}, "ledger.idle_below=101.0"),
        ({"idle_for_s": math.inf}, "ledger.idle_for_s=inf"),
        ({"idle_for_s": -1.0}, "ledger.idle_for_s=-1.0"),
    ],
)
def test_bad_values_are_named(tmp_path, overrides, named):
    problems = validate_ledger(settings(tmp_path / "l.sqlite", **overrides))
    assert len(problems) == 1 and named in problems[0], problems
    assert "allowed" in problems[0]


def test_paths_that_cannot_hold_a_ledger(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        str(tmp_path): "is a directory",
        str(tmp_path / "file" / "l.sqlite"): "is not a directory",
        "postgresql://me:hunter2@db/ledger": "PGPASSWORD",
    }
    for path, needle in cases.items():
        problems = validate_ledger(settings(path))
        assert len(problems) == 1 and needle in problems[0] and "ledger.path" in problems[0]
        assert "hunter2" not in problems[0]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in validate_ledger(settings(locked / "l.sqlite"))[0]
    # A disabled ledger's path is not looked at; its numbers still are.
    assert validate_ledger(settings(tmp_path, enabled=False)) == []
    assert validate_ledger(settings(tmp_path, enabled=False, idle_for_s=0.0))


def test_launch_refuses_bad_ledger_settings_before_starting(tmp_path, tmp_path_factory):
    state, (run,) = run_refused(
        "launch",
        [
            [
                "job=recipe",
                "logger=none",
                "ledger.project=",
                "ledger.sample_interval_s=0",
                f"ledger.path={tmp_path}",
            ]
        ],
        tmp_path_factory,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert_refused_clearly(
        run, ["ledger.project", "ledger.sample_interval_s", "ledger.path", "allowed"], state
    )


# ---- the launch observer --------------------------------------------------------------------


def outcome(attempt, ok, kind, started, ended, last_step, first_beat=None):
    return SimpleNamespace(
        attempt=attempt,
        ok=ok,
        kind=kind,
        started_unix=started,
        ended_unix=ended,
        last_step=last_step,
        first_beat_unix=first_beat,
        failed_node_ids=[],
    )


def beat(step, unix, **extra):
    view = {"step": step, "unix": unix, "loss": 1.0, **extra}
    return SimpleNamespace(beat0=view, pids={}, ending=False)


def saves(count, seconds, unix=None):
    return {"checkpoints": count, "checkpoint_s": seconds, "checkpoint_unix": unix}


def test_recorder_writes_a_restarted_job(tmp_path):
    path = tmp_path / "l.sqlite"
    said = []
    t0 = time.time() - 200
    recorder = LaunchRecorder(
        settings(path, project="demo"),
        base_job_id="run-1",
        cluster=CLUSTER,
        detail={"job": "gpt"},
        tokens_per_step=1000,
        say=said.append,
        started_unix=t0,
    )
    # Attempt 0: first step at +10, one save of 2 s ending at +31, 30 steps by +40, lost.
    recorder.on_attempt_start(0, t0 + 1)
    ckpt = {"resumed_from_step": 0, "first_step_unix": t0 + 10}
    recorder.on_poll(0, None, beat(3, t0 + 12, **ckpt, **saves(0, 0.0)))
    recorder.on_poll(0, None, beat(20, t0 + 31, **ckpt, **saves(1, 2.0, t0 + 31)))
    recorder.on_poll(0, None, beat(30, t0 + 40, **ckpt, **saves(1, 2.0, t0 + 31)))
    recorder.on_attempt_end(outcome(0, False, "node_lost", t0 + 1, t0 + 50, 30))
    # Attempt 1 resumes from step 20, reaches 60 and ends well.
    recorder.on_attempt_start(1, t0 + 55)
    resumed = {"resumed_from_step": 20, "first_step_unix": t0 + 70}
    recorder.on_poll(1, None, beat(21, t0 + 71, **resumed, **saves(0, 0.0)))
    recorder.on_poll(1, None, beat(60, t0 + 150, **resumed, **saves(2, 5.0, t0 + 150)))
    recorder.on_attempt_end(outcome(1, True, "ok", t0 + 55, t0 + 155, 60))
    recorder.finish(True, "", {"final_step": 60, "mfu": 0.25})
    recorder.finish(True, "", None)  # a second call does nothing
    assert said == []

    with Ledger.open(path) as ledger:
        (job,) = ledger.jobs(project="demo")
        attempts, events = ledger.attempts(job["job_id"]), ledger.events(job["job_id"])
    assert job["job_id"] == "run-1" and job["gpus"] == 4 and job["gpu_type"] == "cpu"
    assert job["exit_status"] == "ok" and job["steps"] == 60 and job["tokens"] == 60_000
    assert job["mfu"] == 0.25 and job["detail"]["job"] == "gpt"
    assert [a["cause"] for a in attempts] == ["node_lost", "ok"]
    assert attempts[0]["first_step_unix"] == t0 + 10 and attempts[0]["last_step"] == 30
    assert attempts[0]["last_step_unix"] == t0 + 40 and attempts[1]["resumed_from_step"] == 20
    assert [e["seconds"] for e in events] == [2.0, 5.0]
    assert events[1]["detail"]["saves"] == 2
    parts = breakdown(job, attempts, events)
    assert math.isclose(math.fsum(parts.parts().values()), parts.wall_s)
    # Attempt 0 stepped 30 s less 2 s of saving for 30 steps and redoes 10 of them.
    assert math.isclose(parts.lost_work, 28.0 / 30 * 10)
    assert math.isclose(parts.checkpoint, 7.0) and 0 < parts.goodput < 1


def test_a_relaunch_gets_a_new_job_and_an_error_finishes_it(tmp_path):
    path = tmp_path / "l.sqlite"
    for _ in range(2):
        recorder = LaunchRecorder(settings(path), base_job_id="run-1", cluster=CLUSTER)
        with pytest.raises(KeyboardInterrupt), recorder:
            recorder.on_attempt_start(0, time.time())
            raise KeyboardInterrupt
    with Ledger.open(path) as ledger:
        jobs = ledger.jobs()
        attempts = ledger.attempts("run-1-2")
    assert [j["job_id"] for j in jobs] == ["run-1", "run-1-2"]
    assert {j["exit_status"] for j in jobs} == {"interrupted"}
    assert attempts[0]["cause"] == "interrupted" and attempts[0]["ended_unix"] is not None


def test_a_broken_ledger_prints_one_line_and_never_raises(tmp_path):
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"not a database" * 100)
    said = []
    recorder = LaunchRecorder(settings(path), base_job_id="j", cluster=CLUSTER, say=said.append)
    recorder.on_attempt_start(0, time.time())
    recorder.on_poll(0, None, SimpleNamespace(beat0={"step": "garbage"}, pids={}, ending=False))
    recorder.on_attempt_end(outcome(0, True, "ok", time.time(), time.time(), 1))
    recorder.finish(True)
    assert len(said) == 1 and said[0].startswith("ledger: ") and "job goes on" in said[0]


def test_disabled_recorder_writes_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    recorder = LaunchRecorder(settings(path, enabled=False), base_job_id="j", cluster=CLUSTER)
    recorder.on_attempt_start(0, time.time())
    recorder.finish(True)
    assert not path.exists()
    cfg = SimpleNamespace(cluster=CLUSTER, bench=SimpleNamespace(name="gemm"), suite=None)
    assert record_bench(settings(path, enabled=False), cfg, 0.0, 1.0, 0) is None
    assert not path.exists()


def test_node_labels():
    infos = [
        {"rank": 0, "local_rank": 0, "hostname": "a", "node_id": "aaaa1111ffff"},
        {"rank": 1, "local_rank": 1, "hostname": "a", "node_id": "aaaa1111ffff"},
        {"rank": 2, "local_rank": 0, "hostname": "b", "node_id": "bbbb2222ffff"},
    ]
    assert node_labels(infos) == {0: "a", 2: "b"}
    infos[2]["hostname"] = "a"
    assert node_labels(infos) == {0: "a/aaaa1111", 2: "a/bbbb2222"}


# ---- gosok bench --------------------------------------------------------------------------


def test_record_bench(tmp_path):
    path = tmp_path / "l.sqlite"
    cfg = SimpleNamespace(cluster=CLUSTER, bench=SimpleNamespace(name="gemm"), suite=None)
    first = record_bench(settings(path, project="acc"), cfg, 100.0, 160.0, 0, run_dir=tmp_path)
    again = record_bench(settings(path, project="acc"), cfg, 200.0, 230.0, 1, run_dir=tmp_path)
    suite = SimpleNamespace(cluster=CLUSTER, bench=None, suite=SimpleNamespace(name="quick"))
    third = record_bench(settings(path, project="acc"), suite, 300.0, 310.0, "error")
    with Ledger.open(path) as ledger:
        jobs = {j["job_id"]: j for j in ledger.jobs(project="acc")}
    assert first.startswith("bench-gemm-") and again == f"{first}-2"
    assert third.startswith("bench-suite-quick-")
    assert [jobs[j]["exit_status"] for j in (first, again, third)] == ["ok", "exit 1", "error"]
    assert jobs[first]["kind"] == "bench" and jobs[first]["detail"]["bench"] == "gemm"
    b = breakdown(jobs[first])
    assert b.wall_s == 60.0 and b.goodput == 1.0


def test_record_bench_failure_is_one_line(tmp_path):
    said = []
    cfg = SimpleNamespace(cluster=CLUSTER, bench=SimpleNamespace(name="gemm"), suite=None)
    assert record_bench(settings(tmp_path), cfg, 0.0, 1.0, 0, say=said.append) is None
    assert len(said) == 1 and said[0].startswith("ledger: ")


# ---- idle spans in batches ----------------------------------------------------------------


def test_idle_tracker_matches_one_pass():
    rows = []
    for i in range(60):
        busy = 20 <= i < 25
        for node in ("n1", "n2"):
            value = 80.0 if (busy and node == "n1") else 1.0
            rows.append({"cluster": "c", "node": node, "device": "cpu", "unix": float(i),
                         "cpu_pct": value, "gpu_util_pct": None})  # fmt: skip
    expected = idle_spans(rows, 5.0, 10.0)
    tracker = IdleTracker(5.0, 10.0)
    found = []
    for start in range(0, len(rows), 14):
        found += tracker.feed(rows[start : start + 14])
    found += tracker.feed([], final=True)
    key = lambda s: (s["node"], s["start_unix"], s["end_unix"])  # noqa: E731
    assert sorted(map(key, found)) == sorted(map(key, expected))
    assert len(expected) == 3


def test_sampler_measures_the_given_processes_only():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    spinner = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, "
         "'-c', 'while True: pass'])"]
    )  # fmt: skip
    try:
        time.sleep(0.3)
        quiet = UtilSampler(60, "n", pids=[sleeper.pid], use_nvml=False).start()
        busy = UtilSampler(60, "n", pids=[spinner.pid], use_nvml=False).start()
        time.sleep(0.5)
        (quiet_row,), (busy_row,) = quiet.sample_once(), busy.sample_once()
        quiet.stop(), busy.stop()
    finally:
        for child in psutil.Process(spinner.pid).children(recursive=True):
            child.kill()
        for proc in (sleeper, spinner):
            proc.kill()
            proc.wait()
    assert quiet_row["device"] == "cpu" and quiet_row["cpu_pct"] < 1.0
    assert busy_row["cpu_pct"] > 1.0  # the spinning grandchild counts for its parent
    assert busy_row["mem_used_bytes"] > quiet_row["mem_used_bytes"] / 2 > 0


def test_saves_between_two_polls_are_each_recorded(tmp_path):
    path = tmp_path / "l.sqlite"
    t0 = time.time() - 100
    recorder = LaunchRecorder(settings(path), base_job_id="run-1", cluster=CLUSTER)
    recorder.on_attempt_start(0, t0)
    first = {"resumed_from_step": 0, "first_step_unix": t0 + 1}
    log = [[10, t0 + 5, 0.5], [20, t0 + 9, 0.75]]  # two saves, one poll after both
    recorder.on_poll(0, None, beat(20, t0 + 9, **first, **saves(2, 1.25, t0 + 9),
                                   checkpoint_log=log))  # fmt: skip
    recorder.on_attempt_end(outcome(0, True, "ok", t0, t0 + 10, 20))
    recorder.finish(True, "", {"final_step": 20})
    with Ledger.open(path) as ledger:
        events = ledger.events("run-1")
    assert [(e["detail"]["step"], e["seconds"]) for e in events] == [(10, 0.5), (20, 0.75)]
