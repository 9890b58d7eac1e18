"""`gosok launch` on a local cluster whose nodes are separate hosts (own network, hostname
and /tmp): an unmodified torchrun-style script that lives only in the driver's /tmp runs
on every rank, and its output arrives in the driver's rank logs; the DDP recipe trains and
checkpoints with no shared run directory. Needs root (CI runs as root)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gosok.launcher.cluster.netns import problem
from tests.conftest import run_gosok

pytestmark = pytest.mark.skipif(problem() is not None, reason=f"netns: {problem()}")
CLUSTER = ["cluster=local", "cluster.name=nshosts", "cluster.nodes=2", "cluster.gpus_per_node=2",
           "cluster.local.isolation=netns"]  # fmt: skip

SCRIPT = """
import os, socket, torch, torch.distributed as dist
dist.init_process_group("gloo")
tag = f"gosok-probe-{os.environ['GOSOK_RUN_ID']}-"
mine = f"/tmp/{tag}{os.environ['RANK']}"
open(mine, "w").close()
dist.barrier()  # every rank has written its file into its own host's /tmp
seen = sorted(p for p in os.listdir("/tmp") if p.startswith(tag))
x = torch.ones(4) * (dist.get_rank() + 1)
dist.all_reduce(x)
print("REPORT", os.environ["RANK"], socket.gethostname(), len(seen), float(x[0]), flush=True)
dist.barrier()
os.unlink(mine)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def hosts(ray_cluster):
    up = run_gosok("cluster", "up", *CLUSTER, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    yield
    run_gosok("cluster", "down", *CLUSTER)


def test_script_in_driver_tmp_runs_on_separate_hosts(hosts, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    run = run_gosok(
        "launch", "job=script", f"job.script={script}", *CLUSTER, "logger=none",
        f"hydra.run.dir={run_dir}", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = {}
    for rank in range(4):
        log = run_dir / "logs" / "attempt-0" / f"rank-{rank}.log"
        line = next(ln for ln in log.read_text().splitlines() if ln.startswith("REPORT"))
        _, r, host, seen, total = line.split()
        reports[int(r)] = (host, int(seen), float(total))
    assert sorted(reports) == [0, 1, 2, 3]
    assert len({host for host, _, _ in reports.values()}) == 2  # two hosts
    assert all(seen == 2 for _, seen, _ in reports.values())  # each host's own /tmp
    assert all(total == 10.0 for _, _, total in reports.values())  # 1+2+3+4 over gloo
    placement = json.loads((run_dir / "logs" / "attempt-0" / "placement.json").read_text())
    assert len({p["node_id"] for p in placement["placement"]}) == 2


def test_recipe_trains_without_a_shared_run_dir(hosts, tmp_path):
    run_dir = tmp_path / "run"
    run = run_gosok(
        "launch", "job=recipe", "job.strategy=ddp", "job.steps=20",
        "checkpoint.every_steps=10", *CLUSTER, "logger=none", f"hydra.run.dir={run_dir}",
        timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["ok"] and doc["metrics"]["final_step"] == 20
    ckpt = Path(doc["checkpoint_dir"])
    assert not ckpt.is_relative_to(run_dir)  # the cluster's shared storage
    assert json.loads((ckpt / "manifest.json").read_text())["latest_step"] == 20
