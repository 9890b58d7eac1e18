"""Script mode on the real local Ray cluster: an unmodified torchrun-style script on every
rank across 2 nodes, the right env per rank, a cross-node all_reduce, argv without a
shell, rank 0 only on the terminal, and a code error that is not retried forever.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_gosok

ENV_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "NODE_RANK", "GOSOK_RUN_ID", "GOSOK_CHECKPOINT_DIR", "GOSOK_RESTART_COUNT",
        "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE",
        "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
        "OMP_NUM_THREADS", "TORCHELASTIC_ERROR_FILE"]
print("REPORT " + json.dumps({"env": {k: os.environ.get(k) for k in keys},
                               "elastic": dist.is_torchelastic_launched(),
                               "sum": value.item(), "argv": sys.argv[1:]}), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def reports(text: str) -> list[dict]:
    return [json.loads(ln.split("REPORT ", 1)[1]) for ln in text.splitlines() if "REPORT " in ln]


def test_script_mode_env_and_all_reduce_across_nodes(ray_cluster, tmp_path):
    (tmp_path / "train.py").write_text(ENV_SCRIPT)
    run_dir = tmp_path / "run"
    run = run_gosok(
        "launch", "job=script", "job.script=train.py", "job.args=[--lr,'3e-4','a b;echo x']",
        "cluster.nodes=2", "cluster.gpus_per_node=2", "logger=none", f"hydra.run.dir={run_dir}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    on_terminal = reports(run.stdout)
    assert [r["env"]["RANK"] for r in on_terminal] == ["0"], "only rank 0 is teed"
    logs = sorted((run_dir / "logs" / "attempt-0").glob("rank-*.log"))
    per_rank = [reports(p.read_text())[0] for p in logs]
    assert len(per_rank) == 4
    placement = json.loads((run_dir / "logs" / "attempt-0" / "placement.json").read_text())
    node_of = {p["rank"]: p["node_id"] for p in placement["placement"]}
    assert node_of[0] == node_of[1] != node_of[2] == node_of[3]
    ports = {r["env"]["MASTER_PORT"] for r in per_rank}
    assert len(ports) == 1
    for report in per_rank:
        env = report["env"]
        rank = int(env["RANK"])
        assert report["sum"] == 10.0  # 1 + 2 + 3 + 4 over both nodes
        assert report["argv"] == ["--lr", "3e-4", "a b;echo x"]
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["LOCAL_RANK"] == str(rank % 2) and env["NODE_RANK"] == str(rank // 2)
        # torchrun's whole environment: frameworks that ask torch whether torchrun started
        # them (Lightning, Accelerate) take the same path under gosok.
        assert report["elastic"] is True and env["TORCHELASTIC_RUN_ID"] == env["GOSOK_RUN_ID"]
        assert env["GROUP_RANK"] == env["NODE_RANK"] and env["GROUP_WORLD_SIZE"] == "2"
        assert env["ROLE_NAME"] == "default" and env["ROLE_RANK"] == env["RANK"]
        assert env["ROLE_WORLD_SIZE"] == "4" and env["TORCHELASTIC_RESTART_COUNT"] == "0"
        assert env["TORCHELASTIC_MAX_RESTARTS"] == "3"
        assert env["TORCHELASTIC_ERROR_FILE"].endswith(f"rank-{rank}.error.json")
        assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "1")
        assert env["MASTER_ADDR"] == "127.0.0.2"
        assert env["GOSOK_RESTART_COUNT"] == "0"
        assert env["GOSOK_CHECKPOINT_DIR"] == str(run_dir / "checkpoints")
        assert env["GOSOK_RUN_ID"]
    doc = json.loads((run_dir / "launch.json").read_text())
    assert doc["ok"] and doc["restarts"] == 0


RECORDED_FAILURE = """
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    print("checking the learning rate")
    raise ValueError("bad learning rate 3e-4")

main()
"""


def test_code_error_is_not_retried_forever(ray_cluster, tmp_path):
    """A script decorated with torch's ``@record`` fails: the failure reported is its
    exception, as torchrun reports it (type and message, rank, host, traceback kept)."""
    (tmp_path / "bad.py").write_text(RECORDED_FAILURE)
    run_dir = tmp_path / "run"
    run = run_gosok(
        "launch", "job=script", "job.script=bad.py", "logger=none", "fault.max_failures=5",
        "fault.same_failure_limit=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert "config or code error" in run.stdout
    doc = json.loads(Path(run_dir / "launch.json").read_text())
    assert [a["kind"] for a in doc["attempts"]] == ["exit", "exit"]
    first = doc["attempts"][0]
    assert first["signature"] == "exit 1: ValueError: bad learning rate Ne-N"
    assert first["error"]["message"] == "ValueError: bad learning rate 3e-4"
    where = f"rank {first['error']['rank']} on {first['error']['host']} failed with"
    assert first["message"].startswith(where)
    assert "failed with ValueError: bad learning rate 3e-4 (exit code 1" in first["message"]
    traceback = json.loads(Path(first["error"]["traceback_file"]).read_text())["traceback"]
    assert 'raise ValueError("bad learning rate 3e-4")' in traceback
