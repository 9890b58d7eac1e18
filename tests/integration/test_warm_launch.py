"""Warm rank start in ``gosok launch`` on the real local Ray cluster: ranks forked from each
node's zygote see what fresh ranks see (argv, env, cwd, ``__main__``, exit codes), the
launch says which start it used, falls back to fresh ranks with the reason, kills the
ranks when its driver dies, reports where the time went (``launch.profile=true``), and
the node agent replaces a zygote whose Python environment changed on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import run_gosok
from tests.integration.launch.launch_helpers import wait_for

REPORT_SCRIPT = """
import json, os, sys
preloaded = "torch" in sys.modules
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "NODE_RANK",
        "GOSOK_RUN_ID", "GOSOK_RESTART_COUNT", "GOSOK_STACK_FILE", "PYTHONUNBUFFERED",
        "OMP_NUM_THREADS", "RAY_JOB_ID"]
print("REPORT " + json.dumps({
    "preloaded": preloaded, "name": __name__, "argv": sys.argv, "cwd": os.getcwd(),
    "path0": sys.path[0], "env": {k: os.environ.get(k) for k in keys}, "sum": value.item(),
    "stdin": sys.stdin.read(), "own_group": os.getpgid(0) == os.getpid(),
}), flush=True)
dist.barrier()
dist.destroy_process_group()
sys.exit(0)
"""

COMMON = ["job=script", "logger=none", "cluster.nodes=2", "cluster.gpus_per_node=2"]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _reports(run_dir: Path) -> dict[int, dict]:
    found = {}
    for log in sorted((run_dir / "logs" / "attempt-0").glob("rank-*.log")):
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("REPORT ")]
        assert lines, log.read_text()
        report = json.loads(lines[-1][len("REPORT ") :])
        found[int(report["env"]["RANK"])] = report
    return found


def _launch(tmp_path: Path, name: str, *extra: str, script: str = "report.py"):
    run_dir = tmp_path / name
    run = run_gosok(
        "launch", *COMMON, f"job.script={script}", "job.args=[--lr,'3e-4','a b']",
        f"hydra.run.dir={run_dir}", *extra, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run, run_dir, json.loads((run_dir / "launch.json").read_text())


def test_warm_ranks_see_what_fresh_ranks_see(ray_cluster, tmp_path):
    (tmp_path / "report.py").write_text(REPORT_SCRIPT)
    warm_run, warm_dir, warm_doc = _launch(tmp_path, "warm")
    fresh_run, fresh_dir, fresh_doc = _launch(tmp_path, "fresh", "launch.fresh_process=true")

    assert "ranks: warm start" in warm_run.stdout
    assert warm_doc["rank_start"]["mode"] == "warm"
    assert warm_doc["attempts"][0]["rank_start"]["mode"] == "warm"
    assert "ranks: fresh processes (launch.fresh_process=true)" in fresh_run.stdout
    assert fresh_doc["rank_start"] == {
        "mode": "fresh",
        "reason": "launch.fresh_process=true",
        "preload": ["torch"],
    }
    warm, fresh = _reports(warm_dir), _reports(fresh_dir)
    assert sorted(warm) == sorted(fresh) == [0, 1, 2, 3]
    for rank in range(4):
        w, f = warm[rank], fresh[rank]
        assert w["preloaded"] is True and f["preloaded"] is False
        for key in ("name", "cwd", "sum", "stdin", "own_group"):
            assert w[key] == f[key], (rank, key, w[key], f[key])
        # The script runs from the copy shipped to its node: same name, same directory role.
        assert Path(w["argv"][0]).name == Path(f["argv"][0]).name == "report.py"
        assert w["path0"] == str(Path(w["argv"][0]).parent)
        assert f["path0"] == str(Path(f["argv"][0]).parent)
        assert w["name"] == "__main__" and w["sum"] == 10.0
        assert w["argv"][1:] == ["--lr", "3e-4", "a b"]
        same = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "NODE_RANK", "PYTHONUNBUFFERED", "OMP_NUM_THREADS")  # fmt: skip
        assert {k: w["env"][k] for k in same} == {k: f["env"][k] for k in same}
        # Rank files live on the rank's own node; their output travels back to the run dir.
        assert w["env"]["GOSOK_STACK_FILE"].endswith(f"rank-{rank}.stack.txt")
        assert w["env"]["RAY_JOB_ID"]  # the launching job's, as a fresh rank's actor has
    placement = read_json(warm_dir / "logs" / "attempt-0" / "placement.json")
    assert {p["start"] for p in placement["placement"]} == {"warm"}


def test_fallback_to_fresh_says_why(ray_cluster, tmp_path):
    (tmp_path / "report.py").write_text(REPORT_SCRIPT)
    run, run_dir, doc = _launch(tmp_path, "fallback", "+job.env.PYTHONHASHSEED=7")
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("ranks: ")]
    assert len(lines) == 1, run.stdout
    assert "fresh processes (warm start unavailable: job.env sets PYTHONHASHSEED" in lines[0]
    assert doc["rank_start"]["mode"] == "fresh"
    assert "PYTHONHASHSEED" in doc["rank_start"]["reason"]
    assert all(not r["preloaded"] for r in _reports(run_dir).values())


def test_exit_code_of_a_warm_rank(ray_cluster, tmp_path):
    (tmp_path / "bad.py").write_text("import sys\nprint('bad learning rate')\nsys.exit(3)\n")
    run_dir = tmp_path / "bad"
    run = run_gosok(
        "launch", *COMMON, "job.script=bad.py", "fault.max_failures=0",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["rank_start"]["mode"] == "warm"
    assert "exit 3: bad learning rate" in doc["attempts"][0]["signature"]


SLEEPER = """
import os, time
from gosok.launcher.ranks.heartbeat import beat
beat(1)
print("sleeping", os.getpid(), flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_ranks_die_with_their_driver(ray_cluster, tmp_path):
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    run_dir = tmp_path / "killed"
    out = open(tmp_path / "driver.out", "w+")  # noqa: SIM115  (a pipe could fill up)
    driver = subprocess.Popen(
        [sys.executable, "-m", "gosok.launcher.cli", "launch", *COMMON, "job.script=sleeper.py",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        placement = wait_for(
            lambda: read_json(run_dir / "logs" / "attempt-0" / "placement.json"), 120, "ranks"
        )
        pids = [p["pid"] for p in placement["placement"]]
        assert {p["start"] for p in placement["placement"]} == {"warm"}
        wait_for(lambda: all(_alive(p) for p in pids), 30, "ranks running")
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        killed = time.monotonic()
        wait_for(lambda: not any(_alive(p) for p in pids), 30, "ranks to die with the driver")
        assert time.monotonic() - killed < 15
    finally:
        if driver.poll() is None:
            driver.kill()
        out.close()


BEATING = """
import os, time
import torch
import torch.distributed as dist
from gosok.launcher.ranks.heartbeat import beat

dist.init_process_group("gloo")
grad = torch.ones(4)
dist.all_reduce(grad)
beat(1)
dist.barrier()
dist.destroy_process_group()
"""


def test_profile_names_where_the_time_went(ray_cluster, tmp_path):
    (tmp_path / "beating.py").write_text(BEATING)
    # Every node of the session's cluster has its agent and zygote ...
    _launch(tmp_path, "first", "cluster.nodes=3", "cluster.gpus_per_node=1", script="beating.py")
    run, _, doc = _launch(tmp_path, "profiled", "launch.profile=true", script="beating.py")
    assert "profile (warm ranks; seconds):" in run.stdout
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("ranks: "))
    assert "zygote(s) started" not in line, run.stdout
    phases = doc["profile"]["phases_s"]
    assert list(phases) == [
        "cli", "connect", "placement", "process start", "script imports", "process group",
        "first step",
    ]  # fmt: skip
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    total = doc["profile"]["command_to_first_step_s"]
    assert total == pytest.approx(sum(phases.values()), abs=0.05)
    events = [m["event"] for m in doc["profile"]["rank0_marks"]]
    assert events == ["start", "ready", "pg_init_start", "pg_init_end"]


def test_agent_replaces_a_zygote_whose_environment_changed(ray_cluster, tmp_path):
    import ray

    from gosok.launcher.ranks.agent import NodeAgent, WarmNeeds

    module = tmp_path / "gw_preloaded.py"
    module.write_text("VALUE = 1\n")
    node_id = ray.get_runtime_context().get_node_id()
    agent = NodeAgent.options(
        max_concurrency=4, runtime_env={"env_vars": {"PYTHONPATH": str(tmp_path)}}
    ).remote(node_id)
    try:
        needs = WarmNeeds(preload=("gw_preloaded",), python=sys.executable)
        first = ray.get(agent.prepare.remote(needs, {}), timeout=120)
        assert first["ok"] and first["started"], first
        again = ray.get(agent.prepare.remote(needs, {}), timeout=120)
        assert again["ok"] and not again["started"] and again["pid"] == first["pid"]
        module.write_text("VALUE = 2  # changed on disk\n")
        os.utime(module, (time.time() + 5, time.time() + 5))
        changed = ray.get(agent.prepare.remote(needs, {}), timeout=120)
        assert changed["ok"] and changed["started"] and changed["pid"] != first["pid"]
        broken = WarmNeeds(preload=("gw_missing_module",), python=sys.executable)
        refused = ray.get(agent.prepare.remote(broken, {}), timeout=120)
        assert not refused["ok"] and "gw_missing_module" in refused["reason"]
        assert "\n" not in refused["reason"]
        other = WarmNeeds(preload=("gw_preloaded",), python="/usr/bin/python-other")
        assert "job.python" in ray.get(agent.prepare.remote(other, {}), timeout=30)["reason"]
        setting = ray.get(agent.prepare.remote(needs, {"PYTHONHASHSEED": "7"}), timeout=30)
        assert not setting["ok"] and "PYTHONHASHSEED" in setting["reason"]
    finally:
        ray.get(agent.stop.remote(), timeout=60)
        ray.kill(agent)


STUCK = """
import sys, time
print("up", sys.argv[1:], flush=True)
if sys.argv[1] == "exit":
    sys.exit(3)
time.sleep(300)
"""


def test_node_side_functions_drive_a_warm_child(tmp_path):
    """spawn / poll / dump_stack / stop of ``script_runner`` on a warm child, as an agent
    runs them (no Ray: a bare zygote)."""
    import threading
    from dataclasses import asdict

    from gosok.launcher.ranks import script_runner, zygote

    (tmp_path / "stuck.py").write_text(STUCK)
    server = zygote.Zygote.start(preload=())
    try:
        program = script_runner.Program(sys.executable, str(tmp_path / "stuck.py"))
        spec = {
            "env": {"JOB": "x"},
            "rank_env": {"1": {"SECRET": "s"}},
            "cwd": str(tmp_path),
            "log_dir": str(tmp_path / "logs"),
            "tee_ranks": [0, 1],
            "profile": True,
        }
        ended = threading.Event()
        quick = SimpleNamespace(rank=1, node_id="n", state={})
        info = script_runner.spawn_rank(
            quick,
            {**spec, "program": {**asdict(program), "args": ("exit",)}},
            zygote=server,
            on_exit=ended.set,
        )
        assert info["start"] == "warm" and info["rank"] == 1
        assert ended.wait(30)
        answer = script_runner.poll_rank(quick)
        assert answer["returncode"] == 3 and "up ['exit']" in answer["output"]
        assert [m["event"] for m in answer["marks"]] == ["start", "ready"]

        slow = SimpleNamespace(rank=0, node_id="n", state={})
        script_runner.spawn_rank(
            slow, {**spec, "program": {**asdict(program), "args": ("sleep",)}}, zygote=server
        )
        wait_for(lambda: "up" in script_runner.log_tail(slow), 30, "the child's first line")
        assert script_runner.poll_rank(slow)["returncode"] is None
        stack = script_runner.dump_stack(slow, wait_s=5)
        assert "stuck.py" in stack
        assert script_runner.stop_rank(slow, grace_s=5) == -signal.SIGTERM
    finally:
        server.stop(grace_s=0.5)
