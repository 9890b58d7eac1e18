"""Launch overhead: ``gosok launch`` (warm ranks, the default, and fresh ranks,
``launch.fresh_process=true``) against ``torchrun --standalone``, running the same
torchrun-style script with the same number of ranks, on an already running local Ray
cluster, in one run.

Two numbers per command, per round: the whole command (wall time from starting it to its
exit) and command -> first step (rank 0 writes ``time.time()`` right after its first step:
a forward/backward and a gradient all_reduce). Rounds alternate the three commands,
rotating their order, after one untimed round (it starts the nodes' zygotes, as the
first launch on a fresh cluster does); medians and ratios to torchrun are reported. The
CLI's own start-up is measured too: ``gosok --help`` and a refused override (exit 2).

The local cluster is started first if it is not running (not timed) and stopped at the
end only if this run started it. Results: ``--out`` (sealed JSON, with the device, CPU
model, software versions and this method).

Run: ``python -m gosok.benchmarks.overhead.launch --rounds 5 --nodes 2 --slots 2``.
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

from gosok.benchmarks.overhead.rounds import alternate, facts, medians_and_ratios, print_table
from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.cluster.command import bring_up
from gosok.launcher.config.schema import ClusterConfig
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

GOALS = {"warm_whole_ratio": 0.5, "warm_first_step_ratio": 0.5, "cli_s": 0.5}
METHOD = (
    "each command run as a subprocess from this process; whole = perf_counter around the "
    "subprocess; first step = rank 0's time.time() right after its first step minus "
    "time.time() just before starting the command; one untimed round first, then rounds "
    "alternating torchrun / gosok warm / gosok fresh with the order rotated each round; "
    "medians over rounds; ratios = median / torchrun's median. CLI: median wall time of "
    "`gosok --help` and of a refused override (exit 2) over 5 runs each."
)


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str], marker: Path) -> dict[str, float]:
    marker.unlink(missing_ok=True)
    started_unix = time.time()
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    whole = time.perf_counter() - started
    if run.returncode != 0 or not marker.exists():
        raise RuntimeError(
            f"{' '.join(cmd[:4])} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}"
        )
    return {"whole": whole, "first_step": float(marker.read_text()) - started_unix}


def cli_seconds(cmd: list[str], cwd: Path, expect: int, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - started)
        if run.returncode != expect:
            raise RuntimeError(f"{cmd} exited {run.returncode}, not {expect}:\n{run.stderr}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--cluster-name", default="local")
    parser.add_argument("--out", default="benchmarks/results/cpu/launch_overhead.json")
    args = parser.parse_args(argv)
    cluster = OmegaConf.structured(
        ClusterConfig(name=args.cluster_name, nodes=args.nodes, gpus_per_node=args.slots)
    )
    state = local_cluster.load_state(cluster.name)
    started = not (state and local_cluster.is_running(state))
    if started:
        bring_up(cluster)  # as `gosok cluster up` does: node agents with torch imported
    work = Path(tempfile.mkdtemp(prefix="gosok-overhead-"))
    (work / "first_step.py").write_text(SCRIPT)
    marker = work / "first_step.txt"
    env = {**os.environ, "FIRST_STEP_FILE": str(marker)}
    world = args.nodes * args.slots
    gosok = [sys.executable, "-m", "gosok.launcher.cli"]
    shape = [f"cluster.name={cluster.name}", f"cluster.nodes={args.nodes}",
             f"cluster.gpus_per_node={args.slots}"]  # fmt: skip
    commands = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={world}", "first_step.py"],
        "gosok_warm": [*gosok, "launch", "job=script", "job.script=first_step.py", *shape,
                       "logger=none", f"+job.env.FIRST_STEP_FILE={marker}"],
        "gosok_fresh": [*gosok, "launch", "job=script", "job.script=first_step.py", *shape,
                        "logger=none", f"+job.env.FIRST_STEP_FILE={marker}",
                        "launch.fresh_process=true"],
    }  # fmt: skip
    names = list(commands)

    def one(name: str, index: int) -> dict[str, float]:
        cmd = commands[name]
        if name != "torchrun":
            cmd = [*cmd, f"hydra.run.dir={work / 'runs' / f'{name}-{index}'}"]
        return run_timed(cmd, work, env, marker)

    try:
        times = alternate(names, args.rounds, one, ("whole", "first_step"))
        cli = {
            "help_s": cli_seconds([*gosok, "--help"], work, 0),
            "refusal_s": cli_seconds([*gosok, "launch", "job.strategy=bogus"], work, 2),
        }
    finally:
        if started:
            local_cluster.stop(cluster.name)
    medians, ratios = medians_and_ratios(times)
    print(f"ranks: {world} ({args.nodes} node(s) x {args.slots}); rounds: {args.rounds}")
    print_table(medians, ratios)
    print(f"gosok --help {cli['help_s']:.2f} s; refused override {cli['refusal_s']:.2f} s")
    print(f"goals: warm whole and first step <= {GOALS['warm_whole_ratio']}x torchrun; "
          f"CLI <= {GOALS['cli_s']} s; fresh no worse than before")  # fmt: skip
    write_results(
        Path(args.out),
        {
            "kind": "launch_overhead",
            "what": "gosok launch (warm and fresh ranks) vs torchrun --standalone on the same "
            "script and world size, local cluster already up: whole command and command -> "
            "first step; gosok's CLI start-up",
            **facts(vars(args)),
            "method": METHOD,
            "seconds": times,
            "median_seconds": medians,
            "ratio_to_torchrun": ratios,
            "cli_seconds": cli,
            "goals": GOALS,
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
