"""`gosok launch` on a local cluster whose nodes are separate hosts (own network, hostname
and /tmp), four of them so a two-node job has spares. In order (the last two take nodes
away):

- an unmodified torchrun-style script that lives only in the driver's /tmp runs on every
  rank, and its output arrives in the driver's rank logs; the node's Ray token is in neither
  its own nor its parent's starting environment (``/proc/*/environ``);
- the DDP recipe trains and checkpoints with no shared run directory;
- an unchanged script hanging in a collective is detected and the rank behind is named;
- a full checkpoint disk (a small tmpfs on the shared storage) ends with a clear error,
  not retried, and the previous checkpoint intact;
- an interpreter that exists on the driver's host only: a clear start-up failure naming
  the node, not retried past the same-failure rule;
- a node killed mid-run, then a node whose link is cut: detected, failed over to a spare,
  and the job ends with the uninterrupted run's loss.

Needs root (CI runs as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.cluster.netns import NetnsNetwork, problem, shared_dir
from gosok.launcher.launch.checkpoint import CheckpointStore
from tests.conftest import run_gosok
from tests.integration.launch.launch_helpers import kill_node, read_json, wait_for

pytestmark = pytest.mark.skipif(problem() is not None, reason=f"netns: {problem()}")
NAME = "nshosts"
HOSTS = 4
JOB = ["cluster=local", f"cluster.name={NAME}", "cluster.nodes=2", "cluster.gpus_per_node=2",
       "cluster.isolation=netns", "logger=none"]  # fmt: skip
CLUSTER = JOB[:5]
# A batch large enough that a step takes about 0.2 s here: a node can be killed mid-run.
RECIPE = ["job=recipe", "job.strategy=ddp", "job.steps=30", "checkpoint.every_steps=10",
          "job.micro_batch=128"]  # fmt: skip
SMALL_DISK_BYTES = 8 << 20

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
def leaks(pid):  # the cluster token or its path, in a process's starting environment
    data = open(f"/proc/{pid}/environ", "rb").read()
    return int(b"RAY_AUTH_TOKEN" in data)
print("ENVIRON", leaks("self"), leaks(os.getppid()), flush=True)
dist.barrier()
os.unlink(mine)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def hosts(ray_cluster, state_dir):
    # The small disk is mounted on the shared storage before the nodes start, so every
    # node sees it (as an NFS export with a quota would be).
    small = shared_dir(state_dir, NAME) / "small-disk"
    small.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_BYTES}", "gosok-small", str(small)],
        check=True,
    )
    up = run_gosok("cluster", "up", *CLUSTER[:2], f"cluster.nodes={HOSTS}", *CLUSTER[3:],
                   timeout=240)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield small
    finally:
        run_gosok("cluster", "down", *CLUSTER[:2], f"cluster.nodes={HOSTS}", *CLUSTER[3:])
        subprocess.run(["umount", "-l", str(small)], check=False)


def launch(run_dir: Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    # From a directory in the driver's /tmp, which no other node has.
    return run_gosok("launch", *JOB, *overrides, f"hydra.run.dir={run_dir}", timeout=timeout,
                     cwd=run_dir.parent)  # fmt: skip


@pytest.mark.parametrize("fresh", [False, True], ids=["warm", "fresh"])
def test_script_in_driver_tmp_runs_on_separate_hosts(hosts, tmp_path, fresh):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    how = ["launch.fresh_process=true"] if fresh else []
    run = launch(run_dir, "job=script", f"job.script={script}", *how, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = {}
    for rank in range(4):
        log = run_dir / "logs" / "attempt-0" / f"rank-{rank}.log"
        line = next(ln for ln in log.read_text().splitlines() if ln.startswith("REPORT"))
        _, r, host, seen, total = line.split()
        reports[int(r)] = (host, int(seen), float(total))
    assert sorted(reports) == [0, 1, 2, 3]
    for rank in range(4):  # a rank cannot read the cluster token from its own or its parent's
        log = (run_dir / "logs" / "attempt-0" / f"rank-{rank}.log").read_text()
        assert "ENVIRON 0 0" in log, log[-2000:]
    assert len({host for host, _, _ in reports.values()}) == 2  # two hosts
    assert all(seen == 2 for _, seen, _ in reports.values())  # each host's own /tmp
    assert all(total == 10.0 for _, _, total in reports.values())  # 1+2+3+4 over gloo
    placement = json.loads((run_dir / "logs" / "attempt-0" / "placement.json").read_text())
    assert len({p["node_id"] for p in placement["placement"]}) == 2
    assert {p["hostname"] for p in placement["placement"]} == {h for h, _, _ in reports.values()}
    assert len({p["ip"] for p in placement["placement"]}) == 2


def test_recipe_trains_without_a_shared_run_dir(hosts, tmp_path):
    run_dir = tmp_path / "run"
    run = launch(run_dir, "job=recipe", "job.strategy=ddp", "job.steps=20",
                 "checkpoint.every_steps=10")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["ok"] and doc["metrics"]["final_step"] == 20
    ckpt = Path(doc["checkpoint_dir"])
    assert not ckpt.is_relative_to(run_dir)  # the cluster's shared storage
    assert json.loads((ckpt / "manifest.json").read_text())["latest_step"] == 20


HANG = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, first = dist.get_rank(), os.environ["GOSOK_RESTART_COUNT"] == "0"
for step in range(8):
    if first and rank == 3 and step == 4:
        time.sleep(600)  # never reaches this step's all_reduce
    x = torch.ones(2)
    dist.all_reduce(x)
    time.sleep(0.2)
dist.destroy_process_group()
"""


def test_unchanged_script_hanging_in_a_collective_names_the_rank_behind(hosts, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    run_dir = tmp_path / "run"
    run = launch(run_dir, "job=script", f"job.script={script}", "fault.hang_timeout_s=6",
                 "fault.exclude_failed_nodes=false", timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((run_dir / "launch.json").read_text())
    hang, retry = doc["attempts"][0], doc["attempts"][1]
    assert hang["kind"] == "hang" and hang["stuck_rank"] == 3, hang
    where = next(p for p in hang["placement"] if p["rank"] == 3)
    assert hang["stuck_node_id"] == where["node_id"] and where["hostname"] in hang["message"]
    assert "hang.py" in Path(hang["stack_file"]).read_text()
    assert retry["ok"]


def test_full_checkpoint_disk_is_a_clear_error_and_keeps_the_last_checkpoint(hosts, tmp_path):
    ckpt = hosts / "job"
    first = launch(tmp_path / "a", *RECIPE[:2], "job.steps=10", "checkpoint.every_steps=10",
                   f"checkpoint.dir={ckpt}")  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    store = CheckpointStore(ckpt)
    kept = store.resume_point()
    assert kept is not None and kept.step == 10
    size = sum(f.stat().st_size for f in kept.path.rglob("*") if f.is_file())
    # Leave room for the launch's own files but not for another checkpoint.
    free = os.statvfs(hosts).f_bavail * os.statvfs(hosts).f_frsize
    (hosts / "filler").write_bytes(b"\0" * max(0, free - size // 2))
    try:
        run_dir = tmp_path / "b"
        run = launch(run_dir, *RECIPE[:2], "job.steps=20", "checkpoint.every_steps=10",
                     f"checkpoint.dir={ckpt}")  # fmt: skip
        output = run.stdout + run.stderr
        assert run.returncode != 0, output[-3000:]
        said = next(ln for ln in run.stdout.splitlines() if ln.startswith("failed: "))
        assert "No space left on device" in said and "intact" in said, said
        doc = json.loads((run_dir / "launch.json").read_text())
        assert [a["kind"] for a in doc["attempts"]] == ["disk_full"]  # not retried
        after = CheckpointStore(ckpt).resume_point()
        assert after.step == 10 and CheckpointStore(ckpt).verify(after)
        assert not list(ckpt.glob(".tmp-*"))  # the failed step's files were removed
    finally:
        (hosts / "filler").unlink(missing_ok=True)


def test_interpreter_missing_on_a_node_is_a_clear_spawn_failure(hosts, tmp_path):
    python = tmp_path / "bin" / "python3"  # only in the driver's /tmp: no other host has it
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    run_dir = tmp_path / "run"
    run = launch(run_dir, "job=script", f"job.script={script}", f"job.python={python}",
                 "fault.max_failures=4", timeout=300)  # fmt: skip
    assert run.returncode != 0, run.stdout[-3000:]
    doc = json.loads((run_dir / "launch.json").read_text())
    assert [a["kind"] for a in doc["attempts"]] == ["spawn", "spawn"]  # same failure: stop
    first = doc["attempts"][0]
    assert "could not start on" in first["message"] and str(python) in first["message"]
    assert "No such file or directory" in first["message"] and not first["infra"]
    assert "config or code error" in run.stdout


@pytest.fixture(scope="module")
def reference_loss(hosts, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    run = launch(run_dir, *RECIPE)
    assert run.returncode == 0, run.stdout[-3000:]
    return json.loads((run_dir / "launch.json").read_text())["metrics"]["final_loss"]


def start_recipe(run_dir: Path, *overrides: str) -> subprocess.Popen:
    out = open(run_dir.parent / f"{run_dir.name}.out", "w")  # noqa: SIM115  (no pipe to fill)
    return subprocess.Popen(
        [sys.executable, "-m", "gosok.launcher.cli", "launch", *JOB, *RECIPE,
         f"hydra.run.dir={run_dir}", *overrides],
        stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def first_checkpoint(ckpt: Path) -> None:
    def written() -> bool:
        return (read_json(ckpt / "manifest.json") or {}).get("latest_step", 0) >= 10

    wait_for(written, 240, "the first checkpoint")


def victim_after_first_checkpoint(run_dir: Path) -> tuple[int, str]:
    """A worker node (its index, its node id) that runs ranks of the first attempt."""
    placement = read_json(run_dir / "logs" / "attempt-0" / "placement.json")["placement"]
    net = NetnsNetwork.for_cluster(NAME, HOSTS)
    index_of = {net.hostname(i): i for i in range(1, HOSTS)}
    entry = next(p for p in placement if p["hostname"] in index_of)
    return index_of[entry["hostname"]], entry["node_id"]


def finish(proc: subprocess.Popen, run_dir: Path, reference: float) -> dict:
    proc.wait(timeout=400)
    out = (run_dir.parent / f"{run_dir.name}.out").read_text()
    assert proc.returncode == 0, out[-4000:]
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["metrics"]["resumed_from_step"] >= 10 and doc["metrics"]["restarts"] >= 1
    assert doc["metrics"]["final_loss"] == reference, (doc["metrics"], reference)
    return doc


def test_node_killed_mid_run_fails_over_with_the_same_final_loss(hosts, reference_loss, tmp_path):
    run_dir = tmp_path / "killed"
    proc = start_recipe(run_dir, f"checkpoint.dir={hosts.parent / 'kill-ckpt'}")
    first_checkpoint(hosts.parent / "kill-ckpt")
    index, node_id = victim_after_first_checkpoint(run_dir)
    state = local_cluster.load_state(NAME)
    assert kill_node(state.pgids[index]) > 0
    doc = finish(proc, run_dir, reference_loss)
    assert doc["attempts"][0]["kind"] in ("node_lost", "worker_lost")
    assert node_id in doc["blocklist"]
    assert node_id not in {p["node_id"] for p in doc["attempts"][-1]["placement"]}


def test_link_cut_is_detected_and_fails_over(hosts, reference_loss, tmp_path):
    run_dir = tmp_path / "cut"
    ckpt = hosts.parent / "cut-ckpt"
    proc = start_recipe(run_dir, f"checkpoint.dir={ckpt}", "fault.report_timeout_s=2",
                        "fault.missed_reports=3")  # fmt: skip
    first_checkpoint(ckpt)
    index, node_id = victim_after_first_checkpoint(run_dir)
    cut = time.time()
    NetnsNetwork.for_cluster(NAME, HOSTS).cut_link(index)
    doc = finish(proc, run_dir, reference_loss)
    first = doc["attempts"][0]
    assert first["kind"] in ("node_lost", "worker_lost") and node_id in first["failed_node_ids"]
    assert "reports missed" in first["message"] or "gone" in first["message"]
    assert first["ended_unix"] - cut < 3 * (0.5 + 2) + 10  # missed reports, plus teardown slack
    assert node_id in doc["blocklist"]
