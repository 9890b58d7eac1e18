"""Environment fingerprint of a run: where it ran and with which software.

``node_fingerprint()`` runs on one rank per node (hostname, Ray node id, torch / CUDA /
NCCL / gloo, GPU names and driver where present, CPU model); ``driver_fingerprint()``
describes the machine that launched the run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from typing import Any

from gosok.launcher.config.secrets import current


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _nvidia_smi(fields: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-gpu=<fields>`` (empty without a working nvidia-smi)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()]


def _nvidia_driver() -> str | None:
    rows = _nvidia_smi("driver_version")
    return rows[0][0] if rows and rows[0] else None


def software_versions() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    versions: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gloo_available": dist.is_gloo_available(),
        "gloo": f"bundled with torch {torch.__version__}" if dist.is_gloo_available() else None,
        "nccl": None,
    }
    if torch.cuda.is_available() and dist.is_nccl_available():
        versions["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    try:  # read from the installed metadata: a rank has no need to import Ray
        versions["ray"] = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        versions["ray"] = None
    return versions


def node_fingerprint(ctx: Any = None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        **software_versions(),
        "gpus": [],
        "driver": None,
    }
    if ctx is not None:
        info["ray_node_id"] = ctx.node_id
        info["node_rank"] = ctx.node_rank
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["driver"] = _nvidia_driver()
        # Identities an auditor can match across runs: a re-used or partial run shows.
        rows = [r for r in _nvidia_smi("uuid,serial") if len(r) == 2]
        info["gpu_uuids"] = [r[0] for r in rows]
        info["gpu_serials"] = [r[1] for r in rows]
    return info


def driver_fingerprint() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "argv": [current().text(a) for a in sys.argv],
        **software_versions(),
    }


def per_node_fingerprint(ctx: Any) -> dict[str, Any] | None:
    """Rank function: local rank 0 of each node describes its node."""
    return node_fingerprint(ctx) if ctx.local_rank == 0 else None
