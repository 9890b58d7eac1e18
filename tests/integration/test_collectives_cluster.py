"""Every collective on a real local Ray cluster (2 nodes x 2 ranks, gloo): correct results,
#wrong == 0 in every mode and dtype; clusters that do not match the config are refused;
nothing leaks (actors, placement groups)."""

from __future__ import annotations

import pytest
from rich.console import Console

from gosok.benchmarks.collectives.driver import measure_collectives, step_records
from gosok.benchmarks.collectives.schema import CollectivesBenchConfig
from gosok.launcher.errors import ClusterMismatchError, CollectiveTimeoutError, RankCallError
from gosok.launcher.launch.worker_group import WorkerGroup
from tests.conftest import cluster_config, live_actors, placement_groups_alive, rank_processes

ALL_OPS = [
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "broadcast",
    "reduce",
    "all_to_all",
    "sendrecv",
]


@pytest.fixture(scope="module")
def group(ray_cluster):
    with WorkerGroup(cluster_config(nodes=2, gpus_per_node=2), timeout_s=120) as workers:
        yield workers
    assert not live_actors(), "actors outlived their WorkerGroup"
    assert not rank_processes(ray_cluster), "ranks outlived their WorkerGroup"
    assert not placement_groups_alive(), "placement group outlived its WorkerGroup"


def sweep(group, **overrides):
    bench = CollectivesBenchConfig(
        **{
            "min_bytes": 1024,
            "max_bytes": 65536,
            "step_factor": 8,
            "warmup_iters": 1,
            "iters": 2,
            **overrides,
        }
    )
    return measure_collectives(group, bench, Console(quiet=True))


def test_ranks_span_two_distinct_nodes(group):
    plan = group.plan
    assert plan.world_size == 4 and plan.backend == "gloo"
    node_ids = [info["node_id"] for info in group.rank_info]
    assert node_ids[0] == node_ids[1] != node_ids[2] == node_ids[3]
    envs = group.run(
        lambda ctx: {
            k: __import__("os").environ[k]
            for k in (
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "NODE_RANK",
                "LOCAL_WORLD_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
            )
        }
    )
    for rank, env in enumerate(envs):
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "4"
        assert env["LOCAL_RANK"] == str(rank % 2) and env["NODE_RANK"] == str(rank // 2)
        assert env["MASTER_ADDR"] == plan.master_addr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_every_collective_is_correct(group, dtype):
    records = sweep(group, ops=ALL_OPS, dtypes=[dtype])
    measured = {(r["op"], r["mode"]) for r in records}
    assert measured == {
        ("all_reduce", "in_place"),
        ("all_gather", "out_of_place"),
        ("all_gather", "in_place"),
        ("reduce_scatter", "out_of_place"),
        ("reduce_scatter", "in_place"),
        ("broadcast", "in_place"),
        ("reduce", "in_place"),
        ("all_to_all", "out_of_place"),
        ("sendrecv", "out_of_place"),
    }
    for record in records:
        assert record["wrong"] == 0, record
        assert record["time_us"] > 0 and record["busbw_gbps"] > 0
        assert len(record["per_rank_time_us"]) == 4


def test_intra_node_scope_measures_each_node(group):
    records = sweep(group, ops=["all_reduce"], scope="intra_node", max_bytes=4096)
    assert {r["group"] for r in records} == {0, 1}
    assert all(r["world_size"] == 2 and r["wrong"] == 0 for r in records)


@pytest.mark.parametrize(
    "split, groups", [("mod:2", [[0, 2], [1, 3]]), ("div:2", [[0, 1], [2, 3]])]
)
def test_split_groups_run_side_by_side_like_nccl_tests_split(group, split, groups):
    """mod:2 on 2 nodes x 2: one rank of each node per group (the rails); div:2: each node."""
    records = sweep(group, ops=["all_reduce"], split=split, max_bytes=4096)
    assert sorted({tuple(r["ranks"]) for r in records}) == sorted(tuple(g) for g in groups)
    assert all(r["world_size"] == 2 and r["wrong"] == 0 for r in records)
    assert all(len(r["per_rank_iter_us"]) == 2 for r in records)


def test_a_corrupted_rank_is_counted_wrong():
    """The check can fail: a rank whose all_reduce result is off is counted per element."""
    answers = [
        {
            "group": 0,
            "group_rank": r,
            "count": 8,
            "size_bytes": 32,
            "modes": {"in_place": {"iter_us": [10.0, 10.0], "wrong": 3 if r == 1 else 0}},
        }
        for r in range(4)
    ]
    bench = CollectivesBenchConfig()
    records = step_records("all_reduce", "float32", bench, [[0, 1, 2, 3]], answers)
    assert records[0]["wrong"] == 3


@pytest.mark.parametrize("shape", [dict(nodes=5, gpus_per_node=2), dict(nodes=2, gpus_per_node=3)])
def test_cluster_that_does_not_match_is_refused(ray_cluster, shape):
    before, pgs_before = len(live_actors()), len(placement_groups_alive())
    with (
        pytest.raises(ClusterMismatchError, match="only|could not place"),
        WorkerGroup(cluster_config(**shape), timeout_s=30),
    ):
        pass
    assert len(live_actors()) == before
    assert len(placement_groups_alive()) == pgs_before


def test_a_rank_failure_comes_back_whole_and_the_group_serves_on(group):
    def refuse_on_rank_1(ctx):  # local: sent by value, as the ranks cannot import tests
        if ctx.rank == 1:
            raise ValueError(f"rank {ctx.rank} refuses")
        return ctx.rank

    with pytest.raises(ValueError, match="rank 1 refuses") as caught:
        group.run(refuse_on_rank_1)
    notes = "\n".join(caught.value.__notes__)
    assert "on rank 1" in notes and "refuse_on_rank_1" in notes
    assert group.run(lambda ctx: ctx.rank) == [0, 1, 2, 3]


def test_a_stuck_or_dead_rank_is_named_and_nothing_is_left(ray_cluster, group):
    others = set(rank_processes(ray_cluster))  # the module group's
    with WorkerGroup(cluster_config(nodes=1), timeout_s=60) as small:
        with pytest.raises(CollectiveTimeoutError, match="rank 1 .* no answer in 2 s"):
            small.run(lambda ctx: __import__("time").sleep(30 * ctx.rank), timeout_s=2)
        with pytest.raises(RankCallError, match="rank 0 .* ended"):
            small.run(lambda ctx: __import__("os")._exit(9))
    assert set(rank_processes(ray_cluster)) == others, "ranks outlived their WorkerGroup"
