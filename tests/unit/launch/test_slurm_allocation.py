"""The Slurm allocation as gosok reads it (pure: the job's environment only), and
``cluster=slurm`` refused through the real CLI when it disagrees with the allocation."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from gosok.launcher.cluster.slurm import (
    Allocation,
    HostlistError,
    allocation_problems,
    expand_hostlist,
    read_exclude_file,
    resolve,
)
from gosok.launcher.config.schema import ClusterConfig
from tests.conftest import assert_refused_clearly, run_gosok, run_refused


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("n1", ["n1"]),
        ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
        ("gpu[8-10,12],login1", ["gpu8", "gpu9", "gpu10", "gpu12", "login1"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("a[098-101]", ["a098", "a099", "a100", "a101"]),
        ("x-1.y,x-2.y", ["x-1.y", "x-2.y"]),
    ],
)
def test_hostlist_expands_as_slurm_writes_it(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["n[1-", "n1]", "n[a-b]", "n[5-2]", "n[1-999999999]"])
def test_malformed_hostlist_is_an_error(text):
    with pytest.raises(HostlistError):
        expand_hostlist(text)


def slurm_env(nodes="n[1-3]", **extra):
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": nodes, **extra}


@pytest.mark.parametrize(
    "extra, gpus, slots",
    [
        ({"SLURM_GPUS_ON_NODE": "8"}, 8, 8),
        ({"SLURM_GPUS_PER_NODE": "h200:4"}, 4, 4),
        ({"SLURM_NTASKS_PER_NODE": "2"}, None, 2),
        ({}, None, 1),
    ],
)
def test_allocation_reads_gpus_or_tasks_per_node(extra, gpus, slots):
    alloc = Allocation.from_env(slurm_env(**extra))
    assert alloc.hostnames == ("n1", "n2", "n3")
    assert alloc.gpus_per_node == gpus and alloc.slots_per_node == slots


def test_outside_a_job_there_is_no_allocation():
    assert Allocation.from_env({}) is None


def cluster(**fields):
    return OmegaConf.merge(OmegaConf.structured(ClusterConfig(name="slurm", kind="slurm")), fields)


def test_resolver_takes_the_allocation_less_spares_and_excluded(monkeypatch, tmp_path):
    for key, value in slurm_env("n[1-4]", SLURM_GPUS_ON_NODE="8").items():
        monkeypatch.setenv(key, value)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# condemned by the suite\nn2\nnot-ours\n\n")
    assert read_exclude_file(exclude) == {"n2", "not-ours"}
    assert resolve("nodes", 0, None) == 4
    assert resolve("nodes", 1, str(exclude)) == 2
    assert resolve("gpus_per_node") == 8


@pytest.mark.parametrize(
    "fields, env, needles",
    [
        ({"nodes": 4}, slurm_env(), ["cluster.nodes=4", "3 usable"]),
        ({"nodes": 3, "spare_nodes": 1}, slurm_env(), ["spare_nodes=1", "= 3"]),
        (
            {"nodes": 3, "gpus_per_node": 4, "gpu": "h200"},
            slurm_env(SLURM_GPUS_ON_NODE="8"),
            ["cluster.gpus_per_node=4", "8 GPU"],
        ),
        ({"nodes": 3, "gpus_per_node": 8}, slurm_env(SLURM_GPUS_ON_NODE="8"), ["cluster.gpu=cpu"]),
        ({"nodes": 3, "gpus_per_node": 9}, slurm_env(SLURM_CPUS_ON_NODE="2"), ["1..2"]),
        ({"nodes": 0}, {}, ["SLURM_JOB_ID is not set", "gosok.sbatch"]),
        ({"nodes": 3, "exclude_file": "/nonexistent/x"}, slurm_env(), ["cluster.exclude_file"]),
    ],
)
def test_a_config_that_disagrees_with_the_allocation_is_named(fields, env, needles):
    problems = allocation_problems(cluster(**fields), env)
    assert problems
    for needle in needles:
        assert any(needle in p for p in problems), problems


def test_a_config_that_matches_the_allocation_passes():
    env = slurm_env(SLURM_GPUS_ON_NODE="8")
    assert (
        allocation_problems(cluster(nodes=2, spare_nodes=1, gpus_per_node=8, gpu="h200"), env) == []
    )


def test_cli_refuses_a_node_count_the_allocation_does_not_have(tmp_path_factory):
    env = slurm_env(SLURM_NTASKS_PER_NODE="2")
    state = tmp_path_factory.mktemp("slurm-state")
    result = run_gosok(
        "bench", "cluster=slurm", "cluster.nodes=5", "dry_run=true",
        f"hydra.run.dir={tmp_path_factory.mktemp('run')}",
        env={**env, "GOSOK_STATE_DIR": str(state)}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert_refused_clearly(result, ["cluster.nodes=5", "job 42 has 3 usable node(s)"], state)


def test_cli_outside_an_allocation_says_how_to_submit(tmp_path_factory):
    state, (result,) = run_refused("bench", [["cluster=slurm"]], tmp_path_factory)
    assert result.returncode == 2
    assert_refused_clearly(result, ["SLURM_JOB_ID is not set", "deploy/slurm/gosok.sbatch"], state)
