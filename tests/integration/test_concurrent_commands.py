"""Three ``gosok bench cluster=local`` commands started at once on one machine, as a user
with several terminals would: each works. The first starts the local cluster; the others
wait for it to come up (never judging a half-started cluster as misconfigured), queue for
its slots while another command's ranks hold them, and the last one to end stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from gosok.launcher.cluster import local as local_cluster

SMALL = ["bench.min_bytes=1024", "bench.max_bytes=1024", "bench.iters=2", "bench.warmup_iters=1"]


def test_three_commands_at_once_share_one_local_cluster(tmp_path):
    state = tmp_path / "state"
    env = {**os.environ, "GOSOK_STATE_DIR": str(state)}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    procs = []
    for index in range(3):
        argv = [
            sys.executable, "-m", "gosok.launcher.cli", "bench", "cluster=local",
            "cluster.nodes=2", "cluster.gpus_per_node=1", "bench.ops=[all_reduce]", *SMALL,
            f"hydra.run.dir={tmp_path / f'run-{index}'}",
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
        time.sleep(1.0)
    pgids: list[int] = []
    while not pgids and procs[0].poll() is None:  # the nodes of the cluster they share
        record = state / "local-local.json"
        if record.exists():
            pgids = json.loads(record.read_text())["pgids"]
        time.sleep(0.2)
    outputs = [proc.communicate(timeout=400)[0] for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "Fix cluster.nodes" not in out
        assert "# Avg bus bandwidth" in out
    joined = "\n".join(outputs)
    assert joined.count("starting local Ray cluster 'local'") == 1, joined[-4000:]
    assert "is being started by gosok command pid" in joined
    for index in range(3):
        assert (tmp_path / f"run-{index}" / "results.json").exists()
    # The last command out stopped it: no cluster recorded, no Ray node left running.
    assert not (state / "local-local.json").exists()
    assert not any(local_cluster.session_members(pgid) for pgid in pgids)
