"""``gosok cluster up|status|down`` manage a real local Ray cluster and leave no process
behind; ``up`` for a provider's cluster is refused."""

from __future__ import annotations

import json

from gosok.launcher.cluster.local import session_members
from tests.conftest import run_gosok


def test_up_status_down(tmp_path):
    env = {"GOSOK_STATE_DIR": str(tmp_path)}
    name = ["cluster.name=clitest", "cluster.nodes=2", "cluster.gpus_per_node=1"]
    up = run_gosok("cluster", "up", *name, env=env, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "local-clitest.json").read_text())
    try:
        status = run_gosok("cluster", "status", *name, env=env)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("slots=1") == 2
    finally:
        down = run_gosok("cluster", "down", *name, env=env)
    assert down.returncode == 0 and "stopped" in down.stdout
    for pgid in state["pgids"]:
        assert not session_members(pgid), f"processes of stopped node session {pgid} remain"
    after = run_gosok("cluster", "status", *name, env=env)
    assert after.returncode == 1 and "not running" in after.stdout


def test_up_refuses_a_provider_cluster(tmp_path):
    result = run_gosok(
        "cluster",
        "up",
        "cluster=kt_h200",
        "cluster.address=10.0.0.1:6379",
        env={"GOSOK_STATE_DIR": str(tmp_path)},
    )
    assert result.returncode != 0 and "local clusters only" in result.stdout


def test_unknown_action_is_refused():
    result = run_gosok("cluster", "restart")
    assert result.returncode == 2 and "up, down, status" in result.stderr
