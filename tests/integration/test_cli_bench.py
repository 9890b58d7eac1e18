"""``gosok bench`` end to end through the CLI on the session's local Ray cluster: the table,
results.json whose busbw re-derives from its raw times with nccl-tests' formulas, the plot,
the sha256 seal, exit codes, Hydra's --cfg and -m, and teardown on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import (
    NCCL_TESTS_BUSBW_FACTORS,
    live_actors,
    placement_groups_alive,
    rank_processes,
    run_gosok,
)

SMALL = ["bench.min_bytes=1024", "bench.max_bytes=16384", "bench.iters=3", "bench.warmup_iters=1"]


@pytest.fixture(scope="module")
def bench_run(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bench-run")
    result = run_gosok(
        "bench",
        "cluster=local",
        *SMALL,
        "bench.dtypes=[float32,bfloat16]",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir, result


def test_bench_prints_the_table_and_writes_results(bench_run):
    run_dir, result = bench_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "#wrong" in out and "algbw" in out and "busbw" in out
    assert out.count("# Avg bus bandwidth") == 14  # 7 ops x 2 dtypes
    assert f"run directory: {run_dir}" in out
    assert (run_dir / "results.json").exists() and (run_dir / "busbw.png").exists()
    assert (run_dir / "busbw.png").stat().st_size > 10_000


def test_busbw_rederives_from_raw_times(bench_run):
    run_dir, _ = bench_run
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["schema"].startswith("gosok.results/") and doc["kind"] == "collectives"
    assert len(doc["records"]) == 2 * 9 * 3  # dtypes x (op, mode) pairs x sizes
    for record in doc["records"]:
        n = record["world_size"]
        time_us = sum(record["per_rank_time_us"]) / n  # time_reduce=avg
        algbw = record["size_bytes"] / (time_us * 1e-6) / 1e9
        assert record["time_us"] == pytest.approx(time_us, rel=1e-12)
        assert record["algbw_gbps"] == pytest.approx(algbw, rel=1e-9)
        factor = NCCL_TESTS_BUSBW_FACTORS[record["op"]](n)
        assert record["busbw_gbps"] == pytest.approx(algbw * factor, rel=1e-9)
        assert record["wrong"] == 0
        assert len(record["per_rank_iter_us"]) == n and len(record["per_rank_iter_us"][0]) == 3
        assert record["per_rank_time_us"][0] == pytest.approx(
            sum(record["per_rank_iter_us"][0]) / 3, rel=1e-12
        )
    env = doc["env"]
    assert len(env["nodes"]) == 2 and len({n["ray_node_id"] for n in env["nodes"]}) == 2
    assert env["nodes"][0]["torch"] and env["driver"]["ray"]
    assert len(doc["sha256"]) == 64


def test_report_rerenders_and_verify_detects_tampering(bench_run, tmp_path):
    run_dir, _ = bench_run
    shown = run_gosok("report", str(run_dir / "results.json"), "--plot", str(tmp_path / "p.png"))
    assert shown.returncode == 0 and "# Avg bus bandwidth" in shown.stdout
    assert (tmp_path / "p.png").exists()
    unsigned = run_gosok("report", "verify", str(run_dir / "results.json"), "--allow-unsigned")
    assert unsigned.returncode == 0 and "UNSIGNED" in unsigned.stdout
    doc = json.loads((run_dir / "results.json").read_text())
    doc["records"][0]["busbw_gbps"] *= 2
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    verdict = run_gosok("report", "verify", str(edited))
    assert verdict.returncode == 1 and "TAMPERED" in verdict.stdout


def test_threshold_miss_exits_non_zero(ray_cluster, tmp_path):
    result = run_gosok(
        "bench",
        "bench.ops=[all_reduce]",
        "bench.max_bytes=1024",
        "bench.min_busbw_gbps=1000000",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 1
    assert "min_busbw_gbps" in result.stdout
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["passed"] is False


def test_cfg_job_and_multirun(ray_cluster, tmp_path):
    shown = run_gosok("bench", "bench.iters=7", "--cfg", "job")
    assert shown.returncode == 0
    assert "iters: 7" in shown.stdout and "gpus_per_node: 2" in shown.stdout
    swept = run_gosok(
        "bench",
        "-m",
        "bench.ops=[all_reduce]",
        "bench.max_bytes=1024",
        "bench.iters=1,2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert swept.returncode == 0, swept.stderr[-2000:]
    assert (tmp_path / "0" / "results.json").exists() and (tmp_path / "1" / "results.json").exists()


def test_ctrl_c_tears_everything_down(ray_cluster, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gosok.launcher.cli",
            "bench",
            "bench.ops=[all_reduce]",
            "bench.min_bytes=1048576",
            "bench.max_bytes=1048576",
            "bench.iters=100000",
            "bench.check=false",
            f"hydra.run.dir={tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(rank_processes(ray_cluster)) < 4:
        time.sleep(0.5)
    assert len(rank_processes(ray_cluster)) >= 4, "ranks never started"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # do not leave its ranks holding the session's slots
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (rank_processes(ray_cluster) or placement_groups_alive()):
        time.sleep(0.5)
    assert not live_actors() and not rank_processes(ray_cluster), output[-2000:]
    assert not placement_groups_alive()


def test_every_op_is_also_written_as_nccl_tests_json(bench_run):
    """nccl-tests' -J form of each op and dtype, read back with the same busbw."""
    from gosok.benchmarks.collectives.nccl_tests import records_from

    run_dir, _ = bench_run
    doc = json.loads((run_dir / "results.json").read_text())
    files = sorted((run_dir / "nccl-tests").glob("*.json"))
    assert len(files) == 14, files  # 7 ops x 2 dtypes
    busbw = {
        (r["op"], r["dtype"], r["size_bytes"], r["mode"]): r["busbw_gbps"] for r in doc["records"]
    }
    for path in files:
        text = path.read_text()
        assert "\n" not in text and '": ' not in text and ", " not in text  # as nccl-tests
        records, problems = records_from(json.loads(text))
        assert problems == [], (path, problems)
        for record in records:
            key = (record["op"], record["dtype"], record["size_bytes"], record["mode"])
            assert record["busbw_gbps"] == pytest.approx(busbw[key], rel=1e-5, abs=1e-6)
