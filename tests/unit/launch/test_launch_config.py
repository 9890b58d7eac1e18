"""Launch config, dry run, allocation rules and checkpoints: no training, no Ray cluster.

Malformed jobs must fail clearly (exit code, the offending key named) with nothing
started; the dry run prints the plan without contacting Ray.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gosok.launcher.config.allocation import check_allocation, track_of
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.launch.checkpoint import CheckpointStore, load_state, save_state
from tests.conftest import assert_refused_clearly, run_gosok, run_refused

SCRIPT = "import torch.distributed as dist\nprint('hello')\n"


def cluster(gpu: str, nodes: int, per_node: int = 8, spare: int = 0):
    return OmegaConf.structured(
        ClusterConfig(
            name="x",
            kind="existing",
            gpu=gpu,
            nodes=nodes,
            gpus_per_node=per_node,
            spare_nodes=spare,
            address="h:1",
        )  # fmt: skip
    )


def test_allocation_rules():
    assert check_allocation(cluster("h200", 32)) == []
    assert "per-project limit" in check_allocation(cluster("h200", 33))[0]
    assert "per-project limit" in check_allocation(cluster("h200", 31, spare=2))[0]
    assert check_allocation(cluster("b200", 16)) == []
    assert "B200: up to 128" in check_allocation(cluster("b200", 17))[0]
    assert track_of("h100_sxm", 1, 4) == "small"
    assert check_allocation(cluster("h100_sxm", 1, 4)) == []
    assert "between the tracks" in check_allocation(cluster("h100_sxm", 1, 6))[0]
    assert "small track" in check_allocation(cluster("b200", 1, 2))[0]
    assert "whole 8-GPU servers" in check_allocation(cluster("h200", 2, 4))[0]
    assert check_allocation(cluster("cpu", 2, 2)) == []


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "train.py").write_text(SCRIPT)
    return tmp_path


def test_dry_run_prints_plan_without_ray(workdir, tmp_path_factory):
    state = tmp_path_factory.mktemp("no-ray-state")
    run = run_gosok(
        "launch", "job=script", "job.script=train.py", "job.args=[--lr,'3e-4','a b;echo x']",
        "cluster.nodes=2", "dry_run=true", f"hydra.run.dir={workdir / 'run'}",
        env={"GOSOK_STATE_DIR": str(state), "WANDB_API_KEY": "sekrit-key-123"}, cwd=workdir,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for expected in ("node_rank 1", '"RANK": "3"', '"MASTER_PORT"', "retry policy",
                     "checkpoints:", "argv (every rank, no shell)", "nothing started"):  # fmt: skip
        assert expected in out, expected
    assert '"--lr", "3e-4", "a b;echo x"' in out  # argv list, verbatim, no shell
    assert "WANDB_API_KEY=<redacted>" in out and "sekrit-key-123" not in out
    assert not list(state.iterdir()), "dry run must not start a cluster"
    written = "".join(p.read_text() for p in (workdir / "run").rglob("*") if p.is_file())
    assert "sekrit-key-123" not in written


def test_dry_run_recipe_deepspeed_batch_arithmetic(workdir):
    run = run_gosok(
        "launch", "job=recipe", "job.strategy=deepspeed", "deepspeed=zero3",
        "job.micro_batch=4", "job.grad_accum=3", "dry_run=true",
        f"hydra.run.dir={workdir / 'run'}", cwd=workdir, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "micro 4 x grad_accum 3 x world 4 = 48 sequences" in run.stdout
    assert '"train_batch_size": 48' in run.stdout and '"stage": 3' in run.stdout


MALFORMED = [
    (["job=recipe", "job.strategy=horovod"], "job.strategy"),
    (["job=recipe", "job.precision=fp16"], "job.precision"),
    (["job=recipe", "job.strategy=deepspeed", "deepspeed.zero_stage=5"], "deepspeed.zero_stage"),
    (["job=recipe", "job.strategy=deepspeed", "deepspeed.train_batch_size=7"], "train_batch_size"),
    (["job=recipe", "job.model.d_model=30", "job.model.n_heads=4"], "job.model.d_model"),
    (["job=recipe", "job.steps=0"], "job.steps"),
    (["job=recipe", "job.no_such_key=1"], "no_such_key"),
    (["job=recipe", "job.micro_batch=lots"], "micro_batch"),
    (["job=script", "job.script=missing.py"], "job.script"),
    (["job=script"], "job.script"),
    (["job=recipe", "tee_ranks=[0,9]"], "tee_ranks"),
    (["job=recipe", "logger.kind=tensorboard"], "logger.kind"),
    (
        ["job=recipe", "cluster=naver_h200_32", "cluster.address=h:1", "cluster.nodes=40"],
        "per-project limit",
    ),
    (
        ["job=recipe", "cluster=kakao_b200", "cluster.address=h:1", "cluster.nodes=17"],
        "B200: up to 128",
    ),
    (
        ["job=recipe", "cluster=existing", "cluster.address=h:1", "cluster.gpus_per_node=6"],
        "between the tracks",
    ),
    (
        [
            "job=recipe",
            "cluster=elice_h100",
            "cluster.address=h:1",
            "cluster.nodes=1",
            "cluster.gpus_per_node=3",
            "cluster.gpu=b200",
        ],
        "small track",
    ),
    (["job=recipe", "run_id=bad/id"], "run_id"),
]


def test_malformed_configs_fail_clearly_with_nothing_started(workdir, tmp_path_factory):
    assert len(MALFORMED) >= 10
    state, results = run_refused(
        "launch", [overrides for overrides, _ in MALFORMED], tmp_path_factory, cwd=workdir
    )
    for (_, needle), run in zip(MALFORMED, results, strict=True):
        assert_refused_clearly(run, [needle], state)


def test_checkpoint_keep_last_and_manifest(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        save_state(store, step, {"w": step}, {"loss": 1.0 / step})
    assert [e.step for e in store.entries()] == [20, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "step-000020",
                                                          "step-000030"]  # fmt: skip
    latest = store.latest()
    assert latest is not None and latest.step == 30 and load_state(latest)["w"] == 30


KILLED_WRITER = """
import os, sys, time
from gosok.launcher.launch.checkpoint import CheckpointStore, save_state
store = CheckpointStore(sys.argv[1], keep_last=3)
save_state(store, 10, {"w": 10}, {})
tmp = store.begin(20)
with open(tmp / "state.pt", "wb") as handle:
    handle.write(b"x" * 1000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_checkpoint_write_killed_half_way_keeps_previous(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    store = CheckpointStore(tmp_path, keep_last=3)
    latest = store.latest()
    assert latest is not None and latest.step == 10
    assert load_state(latest)["w"] == 10
    save_state(store, 20, {"w": 20}, {})  # the next save clears the torn temp directory
    assert not list(tmp_path.glob(".tmp-*")) and store.latest().step == 20
    (store.latest().path / "state.pt").write_bytes(b"corrupt")
    assert store.latest().step == 10  # a checkpoint that fails its hash is skipped


def test_a_benchmark_only_install_is_told_which_extra_a_job_needs(monkeypatch):
    import importlib.util

    from gosok.launcher.config.launch_validate import training_extra_problems

    real = importlib.util.find_spec
    missing = {"deepspeed", "wandb"}  # as after `pip install gosok` without [train]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    cfg = OmegaConf.create(
        {"job": {"kind": "recipe", "strategy": "deepspeed"}, "logger": {"kind": "wandb"}}
    )
    problems = training_extra_problems(cfg)
    assert len(problems) == 2
    assert all("pip install 'gosok[train]'" in p for p in problems)
    assert "job.strategy=deepspeed" in problems[0] and "logger=none" in problems[1]
    quiet = OmegaConf.create(
        {"job": {"kind": "recipe", "strategy": "ddp"}, "logger": {"kind": "none"}}
    )
    assert training_extra_problems(quiet) == []
