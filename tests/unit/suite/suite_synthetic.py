"""A suite results document built from made-up measurements, without Ray.

It goes through the same evaluation, capacity and sealing code as a real run, so report,
verify and compare can be tested in milliseconds at any cluster size and GPU type.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gosok.benchmarks.suite.capacity import capacity
from gosok.benchmarks.suite.phases import evaluate_phases
from gosok.benchmarks.suite.schema import load_contract
from gosok.benchmarks.suite.verdicts import cluster_verdict, exit_code, failing_nodes, node_verdicts
from gosok.launcher.config.catalogue import gpu_spec
from gosok.launcher.results.store import write_results


def synthetic_doc(
    nodes: int = 4,
    per_node: int = 8,
    gpu: str = "h200",
    slow_node: int | None = None,
    slow: float = 0.6,
    seed: int = 0,
    scale: float = 1.0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    spec = gpu_spec(gpu)
    model = f"NVIDIA {spec.device_name_match[0]}" if spec.device_name_match else "cpu"
    contract = load_contract("auto", gpu)

    def jitter(value: float, node: int) -> float:
        factor = slow if node == slow_node else 1.0
        return value * factor * scale * (1 + rng.uniform(-0.01, 0.01))

    ranks = []
    for node in range(nodes):
        for local in range(per_node):
            ranks.append(
                {
                    "rank": node * per_node + local,
                    "node_rank": node,
                    "local_rank": local,
                    "device": f"cuda:{local}",
                    "gemm": {
                        "bf16": {"tflops": jitter(0.78 * (spec.bf16_tflops or 1), node)},
                        "fp8": {"tflops": jitter(0.72 * (spec.fp8_tflops or 1), node)},
                    },
                    "hbm": {"gbps": jitter(0.9 * 1000 * (spec.hbm_tbps or 1), node)},
                }
            )
    intra = 0.8 * (spec.nvlink_gbps or 2) / 2
    per_node_intra = [
        {
            "node_rank": n,
            "op": "all_reduce",
            "size_bytes": 1 << 30,
            "busbw_gbps": jitter(intra, n),
            "busbw_samples": [],
        }
        for n in range(nodes)
    ]
    records = [
        {"group": n, "op": "all_reduce", "size_bytes": size, "busbw_gbps": jitter(intra, n) * f}
        for n in range(nodes)
        for size, f in ((1 << 20, 0.3), (1 << 25, 0.8), (1 << 30, 1.0))
    ]
    inter = {
        "op": "all_reduce",
        "size_bytes": 1 << 30,
        "nodes": nodes,
        "ranks": nodes * per_node,
        "busbw_gbps": 360.0 * scale,
        "records": [
            {"group": 0, "op": "all_reduce", "size_bytes": s, "busbw_gbps": 360.0 * f}
            for s, f in ((1 << 20, 0.2), (1 << 30, 1.0))
        ],
    }
    inventory = [
        {
            "node_rank": n,
            "hostname": f"gpu-{n:03d}",
            "local_world_size": per_node,
            "torch": "2.13.0",
            "cuda": "13.0",
            "nccl": "2.28.3",
            "driver": "580.1",
            "python": "3.11.7",
            "ray": "2.60.0",
            "gpu_details": [
                {
                    "index": i,
                    "name": model,
                    "memory_bytes": int((spec.hbm_gb or 80) * 1e9),
                    "ecc_uncorrected": 0,
                    "temperature_c": 60,
                }
                for i in range(per_node)
            ],
            "xid_errors": 0,
        }
        for n in range(nodes)
    ]
    phases = {
        "inventory": {"nodes": inventory},
        "compute": {"ranks": ranks},
        "intra_node": {"per_node": per_node_intra, "records": records},
        "inter_node": inter,
        "isolation": {"triggered": False, "reasons": []},
    }
    checks = evaluate_phases(phases, spec, contract, per_node, ["torch", "cuda", "nccl", "driver"])
    labels = [
        {
            "node_rank": n,
            "node_id": f"{n:04x}" * 14,
            "ip": f"10.0.0.{n}",
            "hostname": f"gpu-{n:03d}",
        }
        for n in range(nodes)
    ]
    verdict = cluster_verdict(checks)
    return {
        "kind": "suite",
        "config": {"cluster": {"name": f"synthetic_{gpu}", "gpus_per_node": per_node}},
        "env": {"driver": {"torch": "2.13.0", "cuda": "13.0", "nccl": None, "ray": "2.60.0"}},
        "suite": {"name": "acceptance", "description": "", "phases": list(phases)},
        "gpu": asdict(spec),
        "contract": asdict(contract),
        "nodes": labels,
        "phases": phases,
        "timing_seconds": {"setup": 1.0},
        "checks": [c.to_dict() for c in checks],
        "verdict": {
            "cluster": verdict,
            "nodes": {str(n): s for n, s in node_verdicts(checks, nodes).items()},
            "failing_nodes": [labels[n] for n in failing_nodes(checks, nodes)],
            "exit_code": exit_code(verdict),
        },
        "capacity": capacity(
            spec,
            nodes * per_node,
            [r["gemm"]["fp8"]["tflops"] for r in ranks],
            contract.b200_expected_fp8_tflops,
        ),
    }


def write_doc(path: Path, **kwargs: Any) -> dict[str, Any]:
    return write_results(path, synthetic_doc(**kwargs))
