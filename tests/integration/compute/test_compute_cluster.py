"""The compute step on the session's real Ray cluster (2 nodes x 2 ranks, gloo, CPU):
every rank measures at once and answers with its own placement and a relative error within
the entry's tolerance for bf16 and the three FP8 recipes on the reference backend."""

from __future__ import annotations

from omegaconf import OmegaConf

from gosok.benchmarks.compute.driver import verdict
from gosok.benchmarks.compute.schema import GemmBenchConfig
from gosok.benchmarks.compute.step import measure_compute
from gosok.launcher.launch.worker_group import WorkerGroup
from tests.conftest import cluster_config

ENTRIES = [
    "gemm_bf16",
    "gemm_fp8_tensorwise",
    "gemm_fp8_rowwise",
    "gemm_fp8_blockwise",
    "hbm_copy",
    "hbm_triad",
]


def test_every_rank_measures_with_placement_and_tolerance(ray_cluster):
    bench = OmegaConf.merge(
        OmegaConf.structured(GemmBenchConfig),
        {
            "entries": ENTRIES,
            "backends": {"bf16": ["torch"], "fp8": ["reference"], "hbm": ["torch"]},
            "cpu": {
                "squares": [128],
                "transformer": ["llama3_70b_mini.qkv"],
                "tokens": [32],
                "iters": 3,
                "hbm_bytes": 1 << 20,
                "flush_bytes": 1 << 20,
            },
        },
    )
    with WorkerGroup(cluster_config(nodes=2), timeout_s=120) as group:
        records = measure_compute(group, bench, None, "cpu", seed=7)
    assert len(records) == 4 * (4 * 2 + 2)  # ranks x (gemm entries x shapes + hbm entries)
    placements = {(r["node_rank"], r["local_rank"], r["node_id"]) for r in records}
    assert len(placements) == 4
    assert len({node_id for _, _, node_id in placements}) == 2
    for record in records:
        assert record["skipped"] is None and record["hostname"] and record["device_name"]
        assert len(record["times_us"]) == 3 and record["median_us"] > 0
        assert record["rel_error"] <= record["tolerance"], record
        assert record["passed"], record["problems"]
        if record["family"] == "gemm":
            assert record["backend_used"] in ("torch", "reference")
            assert record["rel_error"] > 0  # random normal inputs, never zeros
            assert record["tflops"] > 0 and record["peak_is_estimate"]
        else:
            assert record["gbps"] > 0
    by_rank: dict[int, set[float]] = {}
    for record in records:
        by_rank.setdefault(record["rank"], set()).add(record["rel_error"])
    assert len({frozenset(v) for v in by_rank.values()}) == 4  # fresh inputs per rank
    ok, problems = verdict(records)
    assert ok and problems == []
    for record in records:
        record["problems"] = ["100.0% of peak < min_pct_of_peak"] if record["rank"] == 3 else []
    ok, problems = verdict(records)
    assert not ok and "node 1 gpu 1" in problems[0]
