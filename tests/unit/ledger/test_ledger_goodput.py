"""Goodput arithmetic: the parts of a job's wall time, ETTR, device-hours, programme totals."""

from __future__ import annotations

import math
import random

import pytest

from gosok.launcher.ledger.goodput import PARTS, breakdown, device_hours, programme


def one_restart_job():
    job = {"job_id": "j", "started_unix": 1000.0, "finished_unix": 5000.0, "gpus": 16}
    attempts = [
        # 100 steps at 10 s/step from t=1100; checkpoint at step 50; died at step 100.
        {
            "attempt": 0,
            "started_unix": 1000.0,
            "first_step_unix": 1100.0,
            "last_step_unix": 2100.0,
            "ended_unix": 2400.0,
            "last_step": 100,
            "resumed_from_step": 0,
            "cause": "nccl timeout",
        },
        {
            "attempt": 1,
            "started_unix": 2450.0,
            "first_step_unix": 2600.0,
            "last_step_unix": 4600.0,
            "ended_unix": 4700.0,
            "last_step": 250,
            "resumed_from_step": 50,
            "cause": None,
        },
    ]
    events = [
        {"kind": "checkpoint", "unix": 1620.0, "seconds": 20.0},
        {"kind": "checkpoint", "unix": 4680.0, "seconds": 60.0},  # final save, in the tail
        {"kind": "eval", "unix": 3000.0, "seconds": 99.0},
    ]
    return job, attempts, events


def test_one_restart_parts():
    job, attempts, events = one_restart_job()
    b = breakdown(job, attempts, events)
    assert b.wall_s == 4000.0
    assert b.startup == 100.0
    # last progress of attempt 0 (2100) to first step of attempt 1 (2600)
    assert b.restart_downtime == 500.0
    # (1000 s stepping - 20 s checkpoint) / 100 steps x (100 - 50) redone steps
    assert b.lost_work == pytest.approx(490.0)
    assert b.checkpoint == 80.0
    assert b.idle_tail == 400.0 - 60.0
    assert b.productive == pytest.approx(4000 - 100 - 500 - 490 - 80 - 340)
    assert math.fsum(b.parts().values()) == b.wall_s
    assert 0 < b.goodput < 1
    assert b.goodput == pytest.approx(b.productive / 4000)
    assert b.attempts == 2 and not b.running and not b.scaled


def test_resume_from_scratch_loses_every_step_of_the_failed_attempt():
    job, attempts, events = one_restart_job()
    attempts[1]["resumed_from_step"] = 0
    b = breakdown(job, attempts, events)
    assert b.lost_work == pytest.approx(980.0)


def test_last_progress_falls_back_to_attempt_end():
    job, attempts, _ = one_restart_job()
    for a in attempts:
        a.pop("last_step_unix")
    b = breakdown(job, attempts, [])
    assert b.restart_downtime == 2600.0 - 2400.0
    assert b.idle_tail == 5000.0 - 4700.0
    assert math.fsum(b.parts().values()) == b.wall_s


def test_job_without_attempts():
    job = {"started_unix": 0.0, "finished_unix": 100.0, "first_step_unix": 30.0, "gpus": 1}
    b = breakdown(job)
    assert (b.startup, b.productive, b.attempts) == (30.0, 70.0, 0)
    bench = {"kind": "bench", "started_unix": 0.0, "finished_unix": 100.0, "gpus": 1}
    assert breakdown(bench).goodput == 1.0
    never_stepped = bench | {"kind": "launch"}
    assert breakdown(never_stepped).startup == 100.0 and breakdown(never_stepped).goodput == 0


def test_running_job_is_measured_to_now():
    job = {"started_unix": 0.0, "finished_unix": None, "gpus": 8}
    b = breakdown(job, [{"attempt": 0, "first_step_unix": 10.0}], [], now_unix=60.0)
    assert b.running and b.wall_s == 60.0 and b.startup == 10.0 and b.productive == 50.0
    assert breakdown(job, [], [], now_unix=60.0).startup == 60.0  # not stepping yet


def test_attempt_that_never_stepped():
    job = {"started_unix": 0.0, "finished_unix": 1000.0, "gpus": 8}
    attempts = [
        {"attempt": 0, "started_unix": 0.0, "ended_unix": 200.0, "cause": "placement"},
        {"attempt": 1, "started_unix": 250.0, "first_step_unix": 300.0, "ended_unix": 1000.0},
    ]
    b = breakdown(job, attempts)
    assert (b.startup, b.restart_downtime, b.productive) == (200.0, 100.0, 700.0)


def test_parts_always_add_up_whatever_the_timestamps():
    rng = random.Random(7)
    for _ in range(500):
        start = rng.uniform(1.6e9, 1.8e9)
        wall = rng.uniform(0, 1e6)
        job = {"started_unix": start, "finished_unix": start + wall, "gpus": 8}

        def t(start=start, wall=wall):
            return rng.choice([None, start + rng.uniform(-0.2, 1.2) * wall])

        attempts = [
            {
                "attempt": n,
                "started_unix": t(),
                "first_step_unix": t(),
                "ended_unix": t(),
                "last_step_unix": t(),
                "last_step": rng.choice([None, rng.randint(0, 1000)]),
                "resumed_from_step": rng.choice([None, rng.randint(0, 1000)]),
            }
            for n in range(rng.randint(0, 4))
        ]
        events = [
            {"kind": "checkpoint", "unix": t() or start, "seconds": rng.uniform(0, wall / 3)}
            for _ in range(rng.randint(0, 5))
        ]
        b = breakdown(job, attempts, events)
        parts = b.parts()
        assert math.fsum(parts.values()) == b.wall_s
        assert all(v >= 0 for v in parts.values()), parts
        assert 0.0 <= b.goodput <= 1.0


def test_device_hours_and_programme():
    assert device_hours({"gpus": 8, "gpu_type": "H100"}, 1800) == (4.0, "GPU-hours")
    assert device_hours({"gpus": 4, "gpu_type": "cpu"}, 3600) == (4.0, "CPU-hours")
    rows = []
    for gpus, productive in ((8, 3600.0), (24, 1800.0)):
        row = {"project": "p", "cluster": "c", "unit": "GPU-hours", "gpus": gpus}
        row |= {part: 0.0 for part in PARTS}
        row |= {"productive": productive, "startup": 3600.0 - productive}
        row["device_hours"] = gpus * 1.0
        rows.append(row)
    (group,) = programme(rows)
    assert group["jobs"] == 2 and group["device_hours"] == 32.0
    assert group["goodput"] == pytest.approx((8 * 1.0 + 24 * 0.5) / 32)
