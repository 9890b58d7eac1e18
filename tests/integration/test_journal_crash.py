"""Measurements survive a crash: a collective sweep whose driver is SIGKILLed after its
4th row leaves a journal that ``gosok report RUN_DIR`` renders, saying INCOMPLETE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from gosok.launcher.results.journal import JOURNAL_NAME, read_journal
from tests.conftest import run_gosok


def _rows(path) -> int:
    try:
        return sum(1 for e in read_journal(path)[1] if e["kind"] == "collectives")
    except (OSError, ValueError):
        return 0


def test_sigkilled_sweep_keeps_its_rows(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        sys.executable, "-m", "gosok.launcher.cli", "bench", "cluster=local",
        "bench.ops=[all_reduce]", "bench.min_bytes=1024", "bench.max_bytes=1073741824",
        "bench.step_factor=2", "bench.iters=2", "bench.warmup_iters=0",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = run_dir / JOURNAL_NAME
    try:
        deadline = time.monotonic() + 180
        while _rows(journal) < 4 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert _rows(journal) >= 4, "the sweep never journaled four rows"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert not (run_dir / "results.json").exists()
    measured = _rows(journal)
    shown = run_gosok("report", str(run_dir))
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "INCOMPLETE" in shown.stdout and "Traceback" not in shown.stdout + shown.stderr
    lines = journal.read_text().splitlines()[1:]
    sizes = [json.loads(x)["record"]["size_bytes"] for x in lines if '"collectives"' in x]
    assert len(sizes) == measured
    for size in sizes[:4]:
        assert f" {size:>11d}" in shown.stdout
