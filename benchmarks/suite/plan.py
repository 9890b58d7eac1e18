"""The plan of a suite run and an estimate of its wall time (pure: no Ray, no torch).

``phases.suite_plan(suite, cluster, gpu)`` lists, phase by phase, which rank groups run
concurrently and how long the phase should take. Per-node phases (inventory, compute,
intra-node collectives) run on every node at once, so their estimate does not depend on
the node count; the inter-node phase adds per-hop latency; isolation adds a few rounds,
bounded by ``isolation.round_budget``. ``gosok bench suite=acceptance dry_run=true``
prints this for the configured cluster (e.g. 510 nodes) without starting anything.

The rates are rough planning figures (70% of spec for GPUs, measured orders of magnitude
for the CPU fallback), not measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gosok.benchmarks.collectives.schema import sweep_sizes
from gosok.benchmarks.suite.isolation import round_budget, screen_size
from gosok.benchmarks.suite.verdicts import nic_node_gbps

# CPU fallback planning figures (2-core host, gloo over loopback, several ranks per core).
CPU_GEMM_TFLOPS = 0.005
CPU_HBM_GBPS = 2.0
CPU_BUSBW_GBPS = 0.3
CPU_LATENCY_S = 2e-3
GPU_LATENCY_S = 30e-6
GPU_INTER_HOP_LATENCY_S = 5e-6
# Per round: new process groups and dispatch through Ray.
ROUND_OVERHEAD_S = 1.0
RANK_STARTUP_S = 0.005  # a node agent forks its ranks from a warm zygote: milliseconds each


@dataclass(frozen=True)
class PhaseEstimate:
    phase: str
    concurrency: str
    seconds: float
    grows_with_nodes: str  # "no", "log", "linear"
    note: str = ""


def _collective_seconds(phase: Any, busbw_gbps: float, latency_s: float) -> float:
    per_size = [
        latency_s + size / (busbw_gbps * 1e9)
        for size in sweep_sizes(phase.min_bytes, phase.max_bytes, phase.step_factor)
    ]
    iterations = phase.repeats * (phase.warmup_iters + phase.iters)
    return len(phase.ops) * (iterations * sum(per_size) + ROUND_OVERHEAD_S * len(per_size))


def rates_for(gpu: Any) -> dict[str, float]:
    if gpu.key == "cpu":
        return {
            "gemm_tflops": CPU_GEMM_TFLOPS,
            "hbm_gbps": CPU_HBM_GBPS,
            "intra_gbps": CPU_BUSBW_GBPS,
            "inter_gbps": CPU_BUSBW_GBPS,
            "latency_s": CPU_LATENCY_S,
            "hop_s": CPU_LATENCY_S,
        }
    nic = nic_node_gbps(gpu.nics) or 100.0
    return {
        "gemm_tflops": 0.7 * (gpu.bf16_tflops or 100.0),
        "hbm_gbps": 0.8 * 1000.0 * (gpu.hbm_tbps or 1.0),
        "intra_gbps": 0.7 * (gpu.nvlink_gbps or 100.0) / 2.0,
        "inter_gbps": 0.8 * nic,
        "latency_s": GPU_LATENCY_S,
        "hop_s": GPU_INTER_HOP_LATENCY_S,
    }


def setup_estimate(suite: Any, cluster: Any) -> PhaseEstimate:
    world = cluster.nodes * cluster.gpus_per_node
    return PhaseEstimate(
        "setup",
        f"{world} ranks, one placement group",
        suite.setup_estimate_s + RANK_STARTUP_S * world,
        "linear (small)",
        "cluster connect, rank start, process group init",
    )


def estimate_inventory(suite: Any, cluster: Any, rates: dict[str, float]) -> PhaseEstimate:
    return PhaseEstimate("inventory", f"{cluster.nodes} nodes at once", 3.0, "no")


def estimate_compute(suite: Any, cluster: Any, rates: dict[str, float]) -> PhaseEstimate:
    cfg = suite.compute
    gemm_s = 2.0 * cfg.gemm_size**3 / (rates["gemm_tflops"] * 1e12)
    kernels = [gemm_s] * len(cfg.gemm_dtypes)
    if cfg.hbm:
        kernels.append(3 * cfg.hbm_bytes / (rates["hbm_gbps"] * 1e9))
    seconds = 2.0 + sum(
        cfg.warmup_iters * k + cfg.iters * max(cfg.min_sample_s, k) for k in kernels
    )
    world = cluster.nodes * cluster.gpus_per_node
    return PhaseEstimate("compute", f"{world} GPUs at once", seconds, "no")


def estimate_intra_node(suite: Any, cluster: Any, rates: dict[str, float]) -> PhaseEstimate:
    seconds = _collective_seconds(suite.intra_node, rates["intra_gbps"], rates["latency_s"])
    return PhaseEstimate(
        "intra_node",
        f"{cluster.nodes} groups of {cluster.gpus_per_node} ranks at once",
        seconds,
        "no",
    )


def estimate_inter_node(suite: Any, cluster: Any, rates: dict[str, float]) -> PhaseEstimate:
    cfg, nodes = suite.inter_node, cluster.nodes
    ranks = nodes * cluster.gpus_per_node if cfg.scope == "all" else nodes
    # Small messages go tree-wise (log depth); large ones are bandwidth-bound.
    latency = rates["latency_s"] + rates["hop_s"] * 2 * math.ceil(math.log2(max(ranks, 2)))
    seconds = _collective_seconds(cfg, rates["inter_gbps"], latency)
    note = "two nodes: NCCL picks Tree; busbw can read above the NIC rate" if nodes == 2 else ""
    shape = f"1 group of {ranks} ranks"
    if cfg.rails and cluster.gpus_per_node > 1 and nodes > 1:
        # every rail at once, each one NIC per node: about the same time again
        seconds += _collective_seconds(cfg, rates["inter_gbps"], latency)
        shape += f", then {cluster.gpus_per_node} rails of {nodes} ranks at once"
    return PhaseEstimate("inter_node", shape, seconds, "log (latency)", note)


def estimate_isolation(suite: Any, cluster: Any, rates: dict[str, float]) -> PhaseEstimate | None:
    cfg, nodes, per_node = suite.isolation, cluster.nodes, cluster.gpus_per_node
    if nodes < 2:
        return None
    if nodes < cfg.exhaustive_below:
        rounds = nodes if nodes % 2 else nodes - 1
        shape = "every pair, disjoint pairs at once"
    else:
        size = screen_size(nodes, cfg.group_size)
        rounds = 2 + math.ceil(math.log2(size))
        shape = f"{nodes // size} groups of {size} nodes at once, then halves"
    ranks_per_group = 1 if cfg.ranks == "local0" else per_node
    group_nodes = 2 if nodes < cfg.exhaustive_below else screen_size(nodes, cfg.group_size)
    latency = rates["latency_s"] + rates["hop_s"] * 2 * group_nodes * ranks_per_group
    per_round = ROUND_OVERHEAD_S + cfg.repeats * (cfg.warmup_iters + cfg.iters) * (
        latency + cfg.size_bytes / (rates["inter_gbps"] * 1e9)
    )
    when = "always" if cfg.trigger == "always" else "when a check fails or a node is an outlier"
    return PhaseEstimate(
        "isolation",
        shape,
        rounds * per_round,
        "log",
        f"{when}; ~{rounds} rounds (budget {round_budget(nodes)})",
    )
