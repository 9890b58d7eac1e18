"""``gosok bench bench=gemm cluster=local`` end to end on the CPU fallback: the table with
TFLOPS, % of the cpu entry's (estimated) peak and error vs reference; results.json whose
TFLOPS re-derive from the raw per-iteration times; the plot; ``gosok report``; and
malformed gemm configs refused before anything starts."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from gosok.launcher.results.store import write_results
from tests.conftest import assert_refused_clearly, run_gosok, run_refused


@pytest.fixture(scope="module")
def gemm_run(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gemm-run")
    result = run_gosok("bench", "bench=gemm", "cluster=local", f"hydra.run.dir={run_dir}")
    return run_dir, result


def test_table_is_printed_with_the_estimate_label(gemm_run):
    run_dir, result = gemm_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "% of estimated peak" in out and "ESTIMATE" in out
    assert "TFLOPS" in out and "GB/s" in out and "rel. error" in out
    for entry in (
        "gemm_bf16",
        "gemm_fp8_tensorwise",
        "gemm_fp8_rowwise",
        "gemm_fp8_blockwise",
        "hbm_copy",
        "hbm_triad",
    ):
        assert entry in out
    assert "llama3_70b_mini.qkv@256" in out and "n1/g1" in out
    assert f"run directory: {run_dir}" in out
    assert (run_dir / "compute.png").stat().st_size > 10_000


def test_tflops_rederive_from_raw_times(gemm_run):
    run_dir, _ = gemm_run
    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["kind"] == "gemm" and doc["summary"]["passed"] is True
    assert doc["peak"]["gpu"] == "cpu" and doc["peak"]["estimate"] is True
    assert doc["timing"]["iters"] == 5 and doc["timing"]["flush_l2"] is True
    gemm = [r for r in doc["records"] if r["family"] == "gemm"]
    assert len(gemm) == 4 * 4 * 6  # ranks x entries x shapes
    assert len({r["node_id"] for r in doc["records"]}) == 2
    for record in gemm:
        shape = record["shape"]
        median = statistics.median(record["times_us"])
        tflops = 2 * shape["m"] * shape["n"] * shape["k"] / (median * 1e-6) / 1e12
        assert len(record["times_us"]) == 5 and record["median_us"] == median
        assert record["tflops"] == pytest.approx(tflops, rel=1e-12)
        peak = doc["peak"][f"{record['dtype']}_tflops"]  # the catalogue figure the run used
        assert record["pct_of_peak"] == pytest.approx(100 * tflops / peak, rel=1e-12)
        assert 0 < record["rel_error"] <= record["tolerance"]
    for record in doc["records"]:
        if record["family"] == "hbm":
            median = statistics.median(record["times_us"])
            assert record["gbps"] == pytest.approx(record["bytes"] / median / 1e3, rel=1e-12)


def test_report_rerenders_and_catches_underived_figures(gemm_run, tmp_path):
    run_dir, _ = gemm_run
    shown = run_gosok("report", str(run_dir / "results.json"), "--plot", str(tmp_path / "p.png"))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "% of estimated peak" in shown.stdout and "re-derived from raw times" in shown.stdout
    assert (tmp_path / "p.png").exists()
    doc = json.loads((run_dir / "results.json").read_text())
    doc.pop("sha256")
    doc["records"][0]["tflops"] *= 2
    write_results(tmp_path / "resealed.json", doc)
    verdict = run_gosok("report", str(tmp_path / "resealed.json"))
    assert verdict.returncode == 1 and "NOT RE-DERIVABLE" in verdict.stdout


BAD = [
    (["bench.entries=[gemm_fp16]"], ["bench.entries", "gemm_fp16", "hbm_triad"]),
    (["bench.backends.fp8=[cublas]"], ["bench.backends.fp8", "scaled_mm"]),
    (["bench.profile=tpu"], ["bench.profile", "auto, cpu, gpu"]),
    (["bench.cpu.squares=[100]"], ["bench.cpu.squares", "multiples of 16"]),
]


def test_malformed_gemm_configs_are_refused(tmp_path_factory):
    state, results = run_refused(
        "bench", [["bench=gemm", *overrides] for overrides, _ in BAD], tmp_path_factory
    )
    for (_, needles), result in zip(BAD, results, strict=True):
        assert_refused_clearly(result, needles, state)


def test_dry_run_lists_the_plan_without_ray(tmp_path):
    result = run_gosok(
        "bench",
        "bench=gemm",
        "cluster=nhn_b200_510",
        "cluster.address=10.1.1.1:6379",
        "dry_run=true",
        f"hydra.run.dir={tmp_path}",
        env={"GOSOK_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "4080 rank(s)" in result.stdout and "profile gpu" in result.stdout
    assert "llama3_70b.mlp_up@16384 (16384x28672x8192)" in result.stdout
    assert "Connected to Ray" not in result.stdout + result.stderr


def test_gpu_sweep_smoke_on_cpu(tmp_path):
    out = tmp_path / "sweep.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gosok.benchmarks.compute.gpu_sweep",
            "--cpu",
            "--small",
            "--squares",
            "64",
            "--tokens",
            "16",
            "--iters",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "# goal scaled_mm FP8 tensorwise % of dense FP8 peak" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["kind"] == "gemm" and doc["env"]["torch"] and doc["env"]["device_name"] == "cpu"
    assert set(doc["goals"]) == {
        "fp8_scaled_mm_tensorwise_pct_of_peak",
        "triton_over_scaled_mm_fp8",
        "bf16_pct_of_peak",
        "hbm_copy_pct_of_spec",
    }
    assert doc["goals"]["fp8_scaled_mm_tensorwise_pct_of_peak"]["basis"] == "shape square_64"
    shown = run_gosok("report", str(out))
    assert shown.returncode == 0 and "re-derived from raw times" in shown.stdout
