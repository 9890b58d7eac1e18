"""How much does gosok cost? all_reduce busbw measured by gosok vs a bare torch.distributed
loop doing the same work, in one run, on the same machine.

- gosok: a local Ray cluster (``nodes`` x ``ranks_per_node``), a ``WorkerGroup``, and the
  very ``collective_step`` the collective benchmark uses.
- bare: ``world`` processes from ``torch.multiprocessing``, gloo (or NCCL with --cuda is not
  offered: this measures the CPU fallback), the same warm-up, barrier and timed loop.

The two alternate for ``--rounds`` rounds so drift on a busy machine hits both; the table
shows each round and the medians; the ratio is median(gosok) / median(bare). Goal >= 0.97.

Run: ``python -m gosok.benchmarks.overhead.collectives [--size-mib 64 --iters 10 --rounds 3]``.
Writes JSON (``--out``, default benchmarks/results/cpu/overhead.json).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gosok.benchmarks.collectives.ops import collective_step
from gosok.benchmarks.collectives.report import bandwidths, mean_time_us
from gosok.launcher.cluster import local as local_cluster
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.ranks.fingerprint import driver_fingerprint
from gosok.launcher.results.store import write_results

if TYPE_CHECKING:
    from gosok.launcher.launch.worker_group import WorkerGroup


def _bare_rank(
    rank: int, world: int, port: int, count: int, warmup: int, iters: int, out: Any
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    buf = torch.ones(count, dtype=torch.float32)
    for _ in range(warmup):
        dist.all_reduce(buf)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buf)
    out[rank] = (time.perf_counter() - start) / iters * 1e6
    dist.barrier()
    dist.destroy_process_group()


def bare_time_us(world: int, size_bytes: int, warmup: int, iters: int) -> float:
    """Mean over ranks of each rank's mean time per all_reduce (nccl-tests' -a 1)."""
    manager = mp.Manager()
    out = manager.dict()
    port = local_cluster.free_port("127.0.0.1")
    mp.spawn(_bare_rank, args=(world, port, size_bytes // 4, warmup, iters, out), nprocs=world)
    times = [out[r] for r in range(world)]
    manager.shutdown()
    return sum(times) / len(times)


def gosok_time_us(group: WorkerGroup, size_bytes: int, warmup: int, iters: int) -> float:
    world = group.plan.world_size
    answers = group.run(
        collective_step,
        "all_reduce",
        "float32",
        size_bytes,
        ["in_place"],
        warmup,
        iters,
        False,
        0,
        [list(range(world))],
    )
    times = [mean_time_us(a["modes"]["in_place"]["iter_us"]) for a in answers]
    return sum(times) / len(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/cpu/overhead.json")
    args = parser.parse_args(argv)
    size = args.size_mib * 2**20
    world = args.nodes * args.ranks_per_node
    cluster = ClusterConfig(name="overhead", nodes=args.nodes, gpus_per_node=args.ranks_per_node)
    rows = []
    local_cluster.use_auth(cluster.name)  # Ray reads its auth mode when first imported
    import ray

    from gosok.launcher.launch.worker_group import WorkerGroup

    with local_cluster.local_cluster(cluster) as (address, _):
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            with WorkerGroup(cluster, timeout_s=600) as group:
                for round_index in range(args.rounds):
                    bare = bare_time_us(world, size, args.warmup, args.iters)
                    ours = gosok_time_us(group, size, args.warmup, args.iters)
                    rows.append(
                        {
                            "round": round_index,
                            "bare_time_us": bare,
                            "gosok_time_us": ours,
                            "bare_busbw_gbps": bandwidths("all_reduce", size, bare, world)[1],
                            "gosok_busbw_gbps": bandwidths("all_reduce", size, ours, world)[1],
                        }
                    )
        finally:
            ray.shutdown()
    bare_median = statistics.median(r["bare_busbw_gbps"] for r in rows)
    gosok_median = statistics.median(r["gosok_busbw_gbps"] for r in rows)
    ratio = gosok_median / bare_median
    print(
        f"all_reduce float32 {args.size_mib} MiB, {world} ranks ({args.nodes} local Ray nodes "
        f"x {args.ranks_per_node}), gloo, warmup {args.warmup}, iters {args.iters}"
    )
    print(
        f"{'round':>5} {'bare time(us)':>14} {'bare busbw(GB/s)':>17} "
        f"{'gosok time(us)':>15} {'gosok busbw(GB/s)':>18}"
    )
    for r in rows:
        print(
            f"{r['round']:>5} {r['bare_time_us']:>14.1f} {r['bare_busbw_gbps']:>17.4f} "
            f"{r['gosok_time_us']:>15.1f} {r['gosok_busbw_gbps']:>18.4f}"
        )
    print(
        f"median busbw: bare {bare_median:.4f} GB/s, gosok {gosok_median:.4f} GB/s, "
        f"ratio gosok/bare = {ratio:.3f} (goal >= 0.97)"
    )
    write_results(
        Path(args.out),
        {
            "kind": "overhead",
            "what": "all_reduce busbw, gosok (agent-forked ranks) vs bare torch.distributed",
            "device": "cpu",
            "settings": vars(args),
            "timing": "barrier, then time.perf_counter around iters back-to-back calls; per-rank "
            "mean per call, averaged over ranks; median over rounds",
            "rounds": rows,
            "median_bare_busbw_gbps": bare_median,
            "median_gosok_busbw_gbps": gosok_median,
            "ratio": ratio,
            "env": driver_fingerprint(),
        },
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
