"""Malformed configs fail through the real CLI with a message naming the field (and the
allowed values where the set is closed), a non-zero exit, and nothing started."""

from __future__ import annotations

import pytest

from tests.conftest import assert_refused_clearly, run_gosok, run_refused

BAD_CONFIGS = [
    (["cluster.gpu=h900"], ["cluster.gpu", "allowed values", "h100_sxm"]),
    (["cluster.nodes=0"], ["cluster.nodes=0", ">= 1"]),
    (["cluster.gpus_per_node=-1"], ["cluster.gpus_per_node"]),
    (["bench.min_bytes=-4"], ["bench.min_bytes=-4"]),
    (["bench.min_bytes=4096", "bench.max_bytes=1024"], ["bench.min_bytes=4096", "larger"]),
    (["bench.ops=[all_reduce,allreduce]"], ["bench.ops", "allreduce", "all_gather"]),
    (["bench.dtypes=[float64]"], ["bench.dtypes", "bfloat16"]),
    (["bench.iters=ten"], ["bench.iters", "ten"]),
    (["bench.scope=diagonal"], ["bench.scope", "intra_node"]),
    (["bench.nonsense=1"], ["bench.nonsense is not a setting gosok knows"]),
    (["cluster.nodse=3"], ["cluster.nodse", "nearest: cluster.nodes"]),
    (["+bench.nope=1"], ["bench.nope", "nearest"]),
    (["+bench.itres=5"], ["bench.itres", "bench.iters"]),
    (["cluster=nonexistent"], ["cluster/nonexistent", "local"]),
    (["bench.step_factor=1"], ["bench.step_factor"]),
    (["bench.modes=[]"], ["bench.modes", "in_place"]),
    (["bench.time_reduce=median"], ["bench.time_reduce", "rank0"]),
    (["bench.root=9"], ["bench.root=9"]),
    (["cluster=naver_h200_32"], ["cluster.address"]),
    (["cluster.kind=lsf"], ["cluster.kind", "existing", "slurm"]),
    (["cluster.exclude_file=/etc/hostname"], ["cluster.exclude_file", "kind=slurm"]),
    (["bench=nosuchbench"], ["bench/nosuchbench"]),
    # Suite phases are validated before anything starts (not only on the ranks).
    (["suite=quick", "suite.intra_node.ops=[bogus]"], ["suite.intra_node.ops", "bogus"]),
    (["suite=quick", "suite.inter_node.dtype=int8"], ["suite.inter_node.dtype", "int8"]),
    (["suite=quick", "suite.compute.fp8_recipe=diagonal"], ["suite.compute.fp8_recipe"]),
    (["suite=quick", "suite.phases=[]"], ["suite.phases", "empty"]),
    (["suite=quick", "suite.intra_node.step_factor=1"], ["suite.intra_node.step_factor=1"]),
    (["bench.timeout_s=nan"], ["bench.timeout_s=nan", "finite"]),
    (["bench.split=rail"], ["bench.split='rail'", "mod:<k> or div:<k>"]),
    (["cluster.nodes=2", "bench.split=mod:3"], ["bench.split='mod:3'", "dividing 4"]),
    (["bench.per_iteration_skip=10"], ["bench.per_iteration_skip=10", "bench.iters - 1"]),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_refused("bench", [overrides for overrides, _ in BAD_CONFIGS], tmp_path_factory)


@pytest.mark.parametrize(
    "index", range(len(BAD_CONFIGS)), ids=[" ".join(o) for o, _ in BAD_CONFIGS]
)
def test_bad_config_is_refused_clearly(outcomes, index):
    state, results = outcomes
    assert_refused_clearly(results[index], BAD_CONFIGS[index][1], state)


def test_dry_run_prints_plan_without_ray(tmp_path):
    result = run_gosok(
        "bench",
        "cluster=nhn_b200_510",
        "cluster.address=10.1.1.1:6379",
        "dry_run=true",
        f"hydra.run.dir={tmp_path}",
        env={"GOSOK_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "'world_size': 4080" in result.stdout
    assert "backend': 'nccl'" in result.stdout
    assert "Connected to Ray" not in result.stdout + result.stderr
