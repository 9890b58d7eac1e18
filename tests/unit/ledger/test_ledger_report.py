"""The md/html/csv report shows the same goodput figures as the breakdown."""

from __future__ import annotations

import csv
import math

import pytest

from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.goodput import PARTS, breakdown
from gosok.launcher.ledger.report import goodput_text, write_report


def fill(ledger: Ledger) -> None:
    ledger.start_job(
        "train-1",
        project="llm",
        cluster="h200",
        gpu_type="H200",
        nodes=2,
        gpus=16,
        started_unix=1000.0,
    )
    ledger.record_attempt(
        "train-1",
        0,
        started_unix=1000.0,
        first_step_unix=1100.0,
        last_step_unix=2100.0,
        ended_unix=2400.0,
        last_step=100,
        cause="nccl timeout",
    )
    ledger.record_attempt(
        "train-1",
        1,
        started_unix=2450.0,
        first_step_unix=2600.0,
        last_step_unix=4600.0,
        ended_unix=4700.0,
        last_step=250,
        resumed_from_step=50,
    )
    ledger.record_event("train-1", "checkpoint", seconds=20.0, unix=1620.0)
    ledger.finish_job(
        "train-1", exit_status="ok", finished_unix=5000.0, steps=250, tokens=1e9, mfu=0.42
    )
    ledger.start_job(
        "bench-1",
        kind="bench",
        project="acceptance",
        cluster="cpu-box",
        gpu_type="cpu",
        gpus=4,
        started_unix=1500.0,
    )
    ledger.finish_job("bench-1", exit_status="failed", finished_unix=1800.0)
    ledger.start_job(
        "train-2", project="llm", cluster="h200", gpu_type="H200", gpus=8, started_unix=6000.0
    )
    ledger.add_samples(
        {
            "cluster": "h200",
            "node": f"n{n}",
            "device": "gpu0",
            "unix": 1000.0 + 10 * t,
            "gpu_util_pct": 0.0 if 100 <= t < 120 else 90.0,
        }
        for n in range(2)
        for t in range(300)
    )
    ledger.add_idle_span("h200", "n0", 2000.0, 2190.0, 0.0, device="gpu0")


def test_report_files_agree(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        fill(ledger)
        paths = write_report(ledger, tmp_path / "out", now_unix=7000.0)
        expected = {
            j["job_id"]: breakdown(
                j, ledger.attempts(j["job_id"]), ledger.events(j["job_id"]), now_unix=7000.0
            )
            for j in ledger.jobs()
        }
    assert sorted(paths) == ["csv", "html", "md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ledger.csv",
        "ledger.html",
        "ledger.md",
    ]
    md, page = paths["md"].read_text(), paths["html"].read_text()
    with paths["csv"].open() as handle:
        rows = {r["job_id"]: r for r in csv.DictReader(handle)}
    assert sorted(rows) == sorted(expected)
    for job_id, b in expected.items():
        row = rows[job_id]
        assert float(row["goodput"]) == pytest.approx(b.goodput, abs=5e-5)
        assert math.fsum(float(row[f"{p}_s"]) for p in PARTS) == pytest.approx(b.wall_s, abs=0.01)
        text = goodput_text(float(row["goodput"]))
        assert f"| {job_id} |" in md and text in md
        assert f"<td>{job_id}</td>" in page and text in page
    train = rows["train-1"]
    assert (train["gpu_hours"], train["cpu_hours"]) == (f"{16 * 4000 / 3600:.4f}", "")
    assert (train["attempts"], train["steps"], train["mfu"]) == ("2", "250", "0.4200")
    assert float(train["lost_work_s"]) == pytest.approx(490.0, abs=1e-3)
    assert float(train["idle_device_s"]) == 190.0
    assert rows["bench-1"]["cpu_hours"] == f"{4 * 300 / 3600:.4f}"
    assert rows["train-2"]["running"] == "yes" and rows["train-2"]["startup_s"] == "1000.000"
    assert oct(paths["csv"].stat().st_mode & 0o777) == oct(0o644)
    assert "Programme" in md and "| llm | h200 |" in md
    assert "idle 3m 10s" in md and "Idle spans" in page
    assert page.count("data:image/png;base64,") == 3
    assert "<script" not in page and "http" not in page.split("<body>")[1]


def test_report_filters_and_empty_ledger(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        paths = write_report(ledger, tmp_path / "empty")
        assert "(none)" in paths["md"].read_text()
        fill(ledger)
        paths = write_report(ledger, tmp_path / "out", project="acceptance", since_unix=1200.0)
    with paths["csv"].open() as handle:
        assert [r["job_id"] for r in csv.DictReader(handle)] == ["bench-1"]
