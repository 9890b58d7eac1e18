"""Recovery after a rank fails: ``gosok launch`` (warm ranks, the default, and fresh ranks,
``launch.fresh_process=true``) against ``torchrun --standalone --max-restarts 1``, on the
same script and world size, on an already running local Ray cluster, in one run.

The script's rank 1 exits with code 1 at step ``--fail-step`` of the first attempt (just
after writing ``time.time()``); every attempt after it runs to the end, and its rank 0
writes ``time.time()`` right after its first step (a forward/backward and a gradient
all_reduce). Recovery = that first step minus the exit: noticing the failure, stopping
the other ranks, deciding to restart, starting the ranks again, their process group and
first step. Rounds alternate the three commands, rotating their order, after one untimed
round; medians and ratios to torchrun are reported. Goal: gosok at most 0.5x torchrun.

The local cluster is started first if it is not running (not timed) and stopped at the
end only if this run started it. Results: ``--out`` (sealed JSON, with the device, CPU
model, software versions and this method).

``--node-loss`` (root: network namespaces) measures failover instead: per round a fresh
local cluster whose nodes are separate netns hosts, one more than the job needs; once the
first attempt has taken ``--fail-step`` steps, the host of rank ``slots`` (node rank 1) is
killed (its raylet, Ray workers and ranks, SIGKILL); recovery = the next attempt's first
step on the spare minus the kill. gosok only: torchrun has no spare nodes to fail over to.

Run: ``python -m gosok.benchmarks.overhead.recovery --rounds 5 --nodes 2 --slots 2``;
``... --node-loss --rounds 3 --out benchmarks/results/cpu/recovery_node_loss.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
from gosok.launcher.cluster.netns import NetnsNetwork, shared_dir
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.results.store import write_results

SCRIPT = """
import os, sys, time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
model = torch.nn.Linear(64, 64)
for step in range(int(os.environ["STEPS"])):
    if attempt == 0 and rank == 1 and step == int(os.environ["EXIT_STEP"]):
        with open(os.environ["EXIT_FILE"], "w") as handle:
            handle.write(repr(time.time()))
        sys.exit(1)
    loss = model(torch.randn(8, 64)).square().mean()
    loss.backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    time.sleep(float(os.environ.get("STEP_S", "0")))
    if attempt == 0 and rank == 0 and step == int(os.environ.get("MARK_STEP", "-1")):
        with open(os.environ["RUNNING_FILE"], "w") as handle:
            handle.write(repr(time.time()))
    if attempt > 0 and rank == 0 and step == 0:
        with open(os.environ["FIRST_STEP_FILE"], "w") as handle:
            handle.write(repr(time.time()))
dist.barrier()
dist.destroy_process_group()
"""

GOAL = 0.5  # gosok's recovery at most this times torchrun's
METHOD = (
    "each command run as a subprocess from this process; recovery = rank 0's time.time() "
    "right after the first step of the second attempt minus rank 1's time.time() just "
    "before it exits with code 1 at the first attempt's step EXIT_STEP; whole = "
    "perf_counter around the subprocess; one untimed round first, then rounds alternating "
    "torchrun --max-restarts 1 / gosok warm / gosok fresh with the order rotated each round; "
    "medians over rounds; ratios = median / torchrun's median. torchrun runs with "
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: without it, its restarted ranks read the first "
    "attempt's gloo addresses from the store it shares with them and fail to connect "
    "(torch 2.13 CPU here; pytorch/pytorch#135712), so it never recovers."
)


def run_recovery(cmd: list[str], cwd: Path, env: dict[str, str], work: Path) -> dict[str, float]:
    exit_file, first_step = work / "exit.txt", work / "first_step.txt"
    for path in (exit_file, first_step):
        path.unlink(missing_ok=True)
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    whole = time.perf_counter() - started
    if run.returncode != 0 or not (exit_file.exists() and first_step.exists()):
        raise RuntimeError(
            f"{' '.join(cmd[:4])} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}"
        )
    recovery = float(first_step.read_text()) - float(exit_file.read_text())
    return {"recovery": recovery, "whole": whole}


def kill_host(sid: int) -> int:
    """The host dies: every process of its session (raylet, Ray workers, ranks), SIGKILL."""
    killed = 0
    for _ in range(3):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == sid:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed += 1
                except (ProcessLookupError, PermissionError):
                    continue
        time.sleep(0.1)
    return killed


def node_loss_round(args: argparse.Namespace, index: int) -> float:
    """One failover on a fresh netns cluster: seconds from the kill to the first step on
    the spare."""
    name = f"recovery{index}"
    cluster = OmegaConf.structured(
        ClusterConfig(name=name, nodes=args.nodes + 1, gpus_per_node=args.slots,
                      isolation="netns")
    )  # fmt: skip
    local_cluster.start(cluster, kept=False)
    try:
        shared = shared_dir(local_cluster.state_dir(), name)
        (shared / "recover.py").write_text(SCRIPT)
        files = {n: str(shared / f"{n.lower()}.txt") for n in ("RUNNING_FILE", "FIRST_STEP_FILE")}
        env = {**files, "EXIT_FILE": str(shared / "unused.txt"), "STEPS": str(args.steps * 10),
               "EXIT_STEP": "-1", "MARK_STEP": str(args.fail_step), "STEP_S": "0.2"}  # fmt: skip
        for path in files.values():
            Path(path).unlink(missing_ok=True)
        run_dir = shared / "run"
        cmd = [sys.executable, "-m", "gosok.launcher.cli", "launch", "job=script",
               "job.script=recover.py", "cluster=local", f"cluster.name={name}",
               f"cluster.nodes={args.nodes}", f"cluster.gpus_per_node={args.slots}",
               "cluster.isolation=netns", "logger=none", "fault.max_failures=1",
               *(f"+job.env.{k}={v}" for k, v in env.items()),
               f"hydra.run.dir={run_dir}"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=shared, stdout=subprocess.PIPE, text=True)
        running = Path(files["RUNNING_FILE"])
        while not running.exists() and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the launch ended before the kill:\n{proc.stdout.read()[-3000:]}")
        placement = json.loads((run_dir / "logs" / "attempt-0" / "placement.json").read_text())
        net = NetnsNetwork.for_cluster(name, args.nodes + 1)
        index_of = {net.hostname(i): i for i in range(1, args.nodes + 1)}  # not the head
        victim = next(index_of[p["hostname"]] for p in placement["placement"]
                      if p["hostname"] in index_of)  # fmt: skip
        killed = time.time()
        if not kill_host(local_cluster.load_state(name).pgids[victim]):
            raise RuntimeError(f"no process of host {victim} found to kill")
        out = proc.communicate(timeout=600)[0]
        first = Path(files["FIRST_STEP_FILE"])
        if proc.returncode != 0 or not first.exists():
            raise RuntimeError(f"failover run failed ({proc.returncode}):\n{out[-3000:]}")
        return float(first.read_text()) - killed
    finally:
        local_cluster.stop(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--fail-step", type=int, default=3)
    parser.add_argument("--cluster-name", default="local")
    parser.add_argument("--node-loss", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/cpu/recovery.json")
    args = parser.parse_args(argv)
    if args.node_loss:
        return node_loss(args)
    cluster = OmegaConf.structured(
        ClusterConfig(name=args.cluster_name, nodes=args.nodes, gpus_per_node=args.slots)
    )
    state = local_cluster.load_state(cluster.name)
    started = not (state and local_cluster.is_running(state))
    if started:
        bring_up(cluster)  # as `gosok cluster up` does: node agents with torch imported
    work = Path(tempfile.mkdtemp(prefix="gosok-recovery-"))
    (work / "recover.py").write_text(SCRIPT)
    files = {
        "EXIT_FILE": str(work / "exit.txt"),
        "FIRST_STEP_FILE": str(work / "first_step.txt"),
        "STEPS": str(args.steps),
        "EXIT_STEP": str(args.fail_step),
    }
    env = {**os.environ, **files}
    world = args.nodes * args.slots
    gosok = [sys.executable, "-m", "gosok.launcher.cli", "launch", "job=script",
             "job.script=recover.py", f"cluster.name={cluster.name}",
             f"cluster.nodes={args.nodes}", f"cluster.gpus_per_node={args.slots}",
             "logger=none", "fault.max_failures=1",
             *(f"+job.env.{k}={v}" for k, v in files.items())]  # fmt: skip
    commands = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={world}", "--max-restarts=1", "recover.py"],
        "gosok_warm": gosok,
        "gosok_fresh": [*gosok, "launch.fresh_process=true"],
    }  # fmt: skip
    names = list(commands)
    torchrun_env = {**env, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

    def one(name: str, index: int) -> dict[str, float]:
        cmd = commands[name]
        if name == "torchrun":
            return run_recovery(cmd, work, torchrun_env, work)
        cmd = [*cmd, f"hydra.run.dir={work / 'runs' / f'{name}-{index}'}"]
        return run_recovery(cmd, work, env, work)

    try:
        times = alternate(names, args.rounds, one, ("recovery", "whole"))
    finally:
        if started:
            local_cluster.stop(cluster.name)
    medians, ratios = medians_and_ratios(times)
    print(f"ranks: {world} ({args.nodes} node(s) x {args.slots}); rounds: {args.rounds}")
    print_table(medians, ratios)
    print(f"goal: gosok's recovery <= {GOAL}x torchrun's")
    write_results(
        Path(args.out),
        {
            "kind": "recovery_overhead",
            "what": "recovery after rank 1 exits 1 at a step of the first attempt: gosok "
            "launch (warm and fresh ranks) vs torchrun --standalone --max-restarts 1 on the "
            "same script and world size, local cluster already up",
            **facts(vars(args)),
            "method": METHOD,
            "seconds": times,
            "median_seconds": medians,
            "ratio_to_torchrun": ratios,
            "goal": GOAL,
        },
    )
    print(f"results: {args.out}")
    return 0


def node_loss(args: argparse.Namespace) -> int:
    seconds = []
    for index in range(args.rounds):
        seconds.append(node_loss_round(args, index))
        print(f"round {index}: node killed -> first step on the spare {seconds[-1]:6.2f} s",
              flush=True)  # fmt: skip
    median = statistics.median(seconds)
    print(f"ranks: {args.nodes * args.slots} ({args.nodes} node(s) x {args.slots}, one spare "
          f"host); rounds: {args.rounds}; median {median:.2f} s")  # fmt: skip
    write_results(
        Path(args.out),
        {
            "kind": "node_loss_recovery",
            "what": "gosok launch (warm ranks) failing over to a spare host after the host "
            "of node rank 1 is killed mid-run; local cluster of netns hosts",
            **facts(vars(args)),
            "method": "per round a fresh local cluster of nodes+1 netns hosts (not timed); "
            "rank 0 writes time.time() after step MARK_STEP of the first attempt (steps "
            "sleep 0.2 s); then a worker host running ranks is killed (SIGKILL to every "
            "process of its session) and time.time() taken; recovery = rank 0's time.time() "
            "after the next attempt's first step minus that; median over rounds",
            "seconds": seconds,
            "median_seconds": median,
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
