"""The launch plan is pure: checked here at the programme's largest size, 510 nodes x 8."""

from __future__ import annotations

import pytest

from gosok.launcher.ranks.plan import (
    NodeSlot,
    make_plan,
    node_subset_groups,
    rank_groups,
    synthetic_nodes,
)

NODES, PER_NODE = 510, 8


@pytest.fixture(scope="module")
def big_plan():
    nodes = [
        NodeSlot(f"id{i:03d}", f"10.0.{i // 256}.{i % 256}", f"gpu{i:03d}") for i in range(NODES)
    ]
    return make_plan(nodes, PER_NODE, 29500, "nccl")


def test_world_and_rank_packing(big_plan):
    assert big_plan.world_size == 4080
    assert [r.rank for r in big_plan.ranks] == list(range(4080))
    for spec in big_plan.ranks:
        assert spec.node_rank == spec.rank // PER_NODE
        assert spec.local_rank == spec.rank % PER_NODE
        assert spec.node_id == f"id{spec.node_rank:03d}"


def test_torchrun_env_per_rank(big_plan):
    spec = big_plan.ranks[4079]
    assert spec.env == {
        "MASTER_ADDR": "10.0.0.0",
        "MASTER_PORT": "29500",
        "RANK": "4079",
        "LOCAL_RANK": "7",
        "WORLD_SIZE": "4080",
        "LOCAL_WORLD_SIZE": "8",
        "NODE_RANK": "509",
        "GROUP_RANK": "509",
        "GROUP_WORLD_SIZE": "510",
        "ROLE_NAME": "default",
        "ROLE_RANK": "4079",
        "ROLE_WORLD_SIZE": "4080",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
    }
    assert {r.env["MASTER_ADDR"] for r in big_plan.ranks} == {"10.0.0.0"}


def test_nodes_sharing_an_ip_are_told_apart_by_node_id():
    nodes = [NodeSlot(f"n{i}", "127.0.0.2") for i in range(3)]
    plan = make_plan(nodes, 2, 1234, "gloo")
    assert [r.node_rank for r in plan.ranks] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="unique"):
        make_plan([NodeSlot("same", "a"), NodeSlot("same", "b")], 1, 1, "gloo")


def test_scopes_make_the_right_groups(big_plan):
    assert rank_groups(big_plan, "all") == [list(range(4080))]
    intra = rank_groups(big_plan, "intra_node")
    assert len(intra) == 510 and intra[3] == list(range(24, 32))
    inter = rank_groups(big_plan, "inter_node")
    assert inter == [list(range(0, 4080, 8))]
    with pytest.raises(ValueError, match="allowed"):
        rank_groups(big_plan, "diagonal")


def test_node_subset_groups_are_disjoint(big_plan):
    groups = node_subset_groups(big_plan, [[0, 1], [2, 509]])
    assert groups[1] == list(range(16, 24)) + list(range(4072, 4080))
    with pytest.raises(ValueError, match="disjoint"):
        node_subset_groups(big_plan, [[0, 1], [1, 2]])


@pytest.mark.parametrize("bad", [dict(ranks_per_node=0), dict(master_port=0), dict(nodes=[])])
def test_bad_plan_inputs(bad):
    args = dict(nodes=synthetic_nodes(2), ranks_per_node=2, master_port=29500, backend="gloo")
    args.update(bad)
    with pytest.raises(ValueError):
        make_plan(**args)
