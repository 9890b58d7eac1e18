"""gosok inside a real Slurm allocation: ``sbatch deploy/slurm/gosok.sbatch <command>`` on a
Slurm of three hosts (``slurmctld`` here, one ``slurmd`` per network-namespace host, each
with its own hostname, IP and ``/tmp``). No Slurm command is mocked. In order:

- ``-N`` that disagrees with the overrides is refused (exit 2) before Ray starts;
- the quick suite on three nodes: the job's exit code is the verdict's, the results name
  the three Slurm hostnames, the exclude list is written, nothing is left on any node;
- an exclude list (the suite's ``exclude.txt``) keeps a host out of the job;
- ``scancel`` of a running launch: no Ray or rank process on any node within KillWait;
- recipe training with a spare node: one allocated node's slurmd and every process on it
  are killed mid-run, and the job recovers on the spare from its checkpoint.

Needs root, Debian's slurm-wlm and munge (``.ci/run`` installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.launch.launch_helpers import read_json, wait_for
from tests.integration.slurm.slurm_cluster import SlurmCluster, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"slurm: {unavailable()}")
SBATCH = REPO / "deploy" / "slurm" / "gosok.sbatch"
KILL_WAIT_S = 30
RECIPE = ["job=recipe", "job.strategy=ddp", "logger=none", "checkpoint.every_steps=10"]


@pytest.fixture(scope="module")
def slurm():
    with SlurmCluster(nodes=3, kill_wait_s=KILL_WAIT_S) as cluster:
        yield cluster


def submit(slurm: SlurmCluster, name: str, *args: str, wait: bool = True, nodes: int = 3):
    """``sbatch -N <nodes> gosok.sbatch <args>``; with ``wait``, the finished job's exit code
    and output, else its id."""
    out = slurm.workdir / f"{name}.out"
    cmd = ["sbatch", "--parsable", f"-N{nodes}", "--ntasks-per-node=2",
           f"--chdir={slurm.workdir}", f"--output={out}"]  # fmt: skip
    if wait:
        cmd.append("--wait")
    done = subprocess.run(
        [*cmd, str(SBATCH), *args], env=slurm.env(), capture_output=True, text=True, timeout=900
    )
    if not wait:
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]
    return done.returncode, out.read_text() if out.exists() else done.stderr


def output(slurm: SlurmCluster, name: str) -> str:
    path = slurm.workdir / f"{name}.out"
    return path.read_text() if path.exists() else ""


def job_gone(slurm: SlurmCluster, job_id: str) -> bool:
    listed = subprocess.run(
        ["squeue", "-h", "-j", job_id], env=slurm.env(), capture_output=True, text=True
    )
    return not listed.stdout.strip()


def leftovers(slurm: SlurmCluster) -> dict[int, list[str]]:
    """Processes on each host other than its slurmd: none once a job has ended."""
    found = {}
    for node in range(1, slurm.nodes + 1):
        rest = [c for c in slurm.processes_on(node) if "slurmd -D" not in c]
        if rest:
            found[node] = rest
    return found


def test_node_count_that_disagrees_with_the_allocation_is_refused_before_ray(slurm):
    code, out = submit(slurm, "mismatch", "bench", "cluster.nodes=5")
    assert code == 2, out
    assert "cluster.nodes=5" in out and "3 usable node(s)" in out, out
    assert "starting Ray" not in out and "Traceback" not in out, out


def test_quick_suite_on_three_slurm_hosts(slurm):
    code, out = submit(slurm, "quick", "bench", "suite=quick")
    found = re.search(r"results: (\S+results\.json)", out)
    assert found, out[-4000:]
    run_dir = Path(found.group(1)).parent
    doc = json.loads((run_dir / "results.json").read_text())
    assert code == doc["verdict"]["exit_code"], out[-3000:]  # the verdict is the job's exit
    assert sorted(n["hostname"] for n in doc["nodes"]) == slurm.hostnames
    assert doc["config"]["cluster"]["kind"] == "slurm" and doc["config"]["cluster"]["nodes"] == 3
    failing = {n["hostname"] for n in doc["verdict"]["failing_nodes"]}
    assert set((run_dir / "exclude.txt").read_text().split()) == failing
    assert not re.search(r"\b[0-9a-f]{64}\b", out), "the job's Ray token reached its output"
    assert wait_for(lambda: not leftovers(slurm), 15, "every node clean", every_s=0.5)


def test_an_exclude_list_keeps_condemned_hosts_out(slurm):
    """``cluster.exclude_file`` (the suite's exclude.txt): no Ray node, no rank there."""
    exclude = slurm.workdir / "exclude.txt"
    exclude.write_text(f"{slurm.hostname(2)}\n")
    code, out = submit(slurm, "excluded", "bench", "bench.ops=[all_reduce]",
                       "bench.max_bytes=4096", f"cluster.exclude_file={exclude}")  # fmt: skip
    assert code == 0, out[-3000:]
    found = re.search(r"results: (\S+results\.json)", out)
    doc = json.loads(Path(found.group(1)).read_text())
    hosts = {entry.get("hostname") for entry in doc["audit"]["nodes"]}
    assert hosts == {slurm.hostname(1), slurm.hostname(3)}, hosts
    assert doc["config"]["cluster"]["nodes"] == 2 and "leaving out" in out


def test_scancel_leaves_no_ray_or_rank_process_on_any_node(slurm):
    run_dir = slurm.workdir / "cancel-run"
    job = submit(slurm, "cancel", "launch", *RECIPE, "job.steps=5000", "job.micro_batch=64",
                 "cluster.spare_nodes=1", f"checkpoint.dir={slurm.shared / 'cancel-ckpt'}",
                 f"hydra.run.dir={run_dir}", wait=False)  # fmt: skip
    wait_for(lambda: list((run_dir / "logs").glob("attempt-0/rank-*.log")), 300, "ranks")
    time.sleep(3)
    assert leftovers(slurm), "nothing was running"
    cancelled = time.monotonic()
    subprocess.run(["scancel", job], env=slurm.env(), check=True)
    wait_for(lambda: not leftovers(slurm), KILL_WAIT_S, "every node clean after scancel")
    gone_after = time.monotonic() - cancelled
    assert gone_after < KILL_WAIT_S, gone_after
    wait_for(lambda: job_gone(slurm, job), 60, "the job to leave the queue", every_s=1)
    # Slurm records the cancellation; the node tasks said they stopped Ray.
    shown = subprocess.run(["scontrol", "show", "job", job], env=slurm.env(),
                           capture_output=True, text=True).stdout  # fmt: skip
    assert "CANCELLED" in shown or not shown, shown


def test_recipe_recovers_on_the_spare_node_when_a_node_dies(slurm):
    ckpt = slurm.shared / "recipe-ckpt"
    run_dir = slurm.workdir / "recipe-run"
    submit(slurm, "recipe", "launch", *RECIPE, "job.steps=30", "job.micro_batch=128",
                 "cluster.spare_nodes=1", f"checkpoint.dir={ckpt}", f"hydra.run.dir={run_dir}",
                 wait=False)  # fmt: skip
    wait_for(lambda: (read_json(ckpt / "manifest.json") or {}).get("latest_step", 0) >= 10,
             300, "the first checkpoint")  # fmt: skip
    placement = read_json(run_dir / "logs" / "attempt-0" / "placement.json")["placement"]
    head = slurm.hostname(1)  # the batch host: the driver and the Ray head live there
    victim = next(p["hostname"] for p in placement if p["hostname"] != head)
    victim_index = slurm.hostnames.index(victim) + 1
    slurm.kill_node(victim_index)
    try:
        # The batch script's last line; Slurm itself keeps the job "completing" until the
        # dead node's slurmd times out.
        wait_for(lambda: "Ray stopped on every node" in output(slurm, "recipe"), 400,
                 "the batch script to end", every_s=1)  # fmt: skip
    finally:
        slurm.revive_node(victim_index)
    out = output(slurm, "recipe")
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["ok"], out[-4000:]
    assert doc["attempts"][0]["kind"] in ("node_lost", "worker_lost"), doc["attempts"][0]
    last = {p["hostname"] for p in doc["attempts"][-1]["placement"]}
    assert victim not in last and len(last) == 2
    assert doc["metrics"]["resumed_from_step"] >= 10
    assert "exit 0" in out
