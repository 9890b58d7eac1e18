"""Launch overhead: wall time from the command to the first training step, for
``gosok launch`` on an already running local Ray cluster vs ``torchrun --standalone``,
running the same torchrun-style script with the same number of ranks, in one run.

The script records ``time.time()`` right after its first step (a forward/backward and a
gradient all_reduce) on rank 0; overhead = that time - the time the command was started.
The local cluster is started first if it is not running (not timed) and stopped at the
end only if this run started it.

Run: ``python -m gosok.benchmarks.overhead.launch --rounds 3 --nodes 2 --slots 2``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.ranks.fingerprint import driver_fingerprint
from gosok.launcher.results.store import write_results

SCRIPT = """
import os, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
model = torch.nn.Linear(64, 64)
loss = model(torch.randn(8, 64)).square().mean()
loss.backward()
for p in model.parameters():
    dist.all_reduce(p.grad)
if dist.get_rank() == 0:
    with open(os.environ["FIRST_STEP_FILE"], "w") as handle:
        handle.write(repr(time.time()))
dist.barrier()
dist.destroy_process_group()
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str], marker: Path) -> float:
    marker.unlink(missing_ok=True)
    start = time.time()
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not marker.exists():
        raise RuntimeError(f"{cmd[:3]} failed ({run.returncode}):\n{run.stdout[-2000:]}")
    return float(marker.read_text()) - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--cluster-name", default="local")
    parser.add_argument("--out", default="benchmarks/results/cpu/launch_overhead.json")
    args = parser.parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = OmegaConf.structured(
        ClusterConfig(name=args.cluster_name, nodes=args.nodes, gpus_per_node=args.slots)
    )
    state = local_cluster.load_state(cluster.name)
    started = not (state and local_cluster.is_running(state))
    if started:
        local_cluster.start(cluster)
    work = Path(tempfile.mkdtemp(prefix="gosok-overhead-"))
    (work / "first_step.py").write_text(SCRIPT)
    marker = work / "first_step.txt"
    env = {**os.environ, "FIRST_STEP_FILE": str(marker)}
    world = args.nodes * args.slots
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={world}", "first_step.py"]  # fmt: skip
    gosok = [sys.executable, "-m", "gosok.launcher.cli", "launch", "job=script",
             "job.script=first_step.py", f"cluster.name={cluster.name}",
             f"cluster.nodes={args.nodes}", f"cluster.gpus_per_node={args.slots}",
             "logger=none", f"hydra.run.dir={work / 'run'}",
             f"+job.env.FIRST_STEP_FILE={marker}"]  # fmt: skip
    times: dict[str, list[float]] = {"torchrun": [], "gosok": []}
    try:
        for _ in range(args.rounds):
            times["torchrun"].append(timed(torchrun, work, env, marker))
            times["gosok"].append(timed(gosok, work, env, marker))
    finally:
        if started:
            local_cluster.stop(cluster.name)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["gosok"] / medians["torchrun"]
    print(f"ranks: {world} ({args.nodes} node(s) x {args.slots}); rounds: {args.rounds}")
    print(f"torchrun --standalone : {medians['torchrun']:.2f} s to first step {times['torchrun']}")
    print(f"gosok launch          : {medians['gosok']:.2f} s to first step {times['gosok']}")
    print(f"ratio gosok/torchrun  : {ratio:.2f}x (goal <= 1.5x)")
    write_results(
        Path(args.out),
        {
            "kind": "launch_overhead",
            "what": "command to first training step: gosok launch (local cluster already up) vs "
            "torchrun --standalone, same script, same ranks",
            "device": "cpu",
            "settings": vars(args),
            "timing": "time.time() at the command's start vs rank 0's time.time() right after "
            "its first step; median over rounds",
            "seconds_to_first_step": times,
            "median_seconds": medians,
            "ratio": ratio,
            "env": driver_fingerprint(),
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
