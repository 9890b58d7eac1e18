"""Rank functions of the acceptance suite: run on every rank through ``WorkerGroup.run``.

- ``inventory_rank``: local rank 0 of each node describes the node (GPU model, count,
  memory, driver / CUDA / NCCL / torch versions; ECC, XID, temperature and clocks when
  NVML is present; CPU model, cores and memory on the CPU fallback).
- ``prepare_rank``: fixed torch threads and one core per local rank on the CPU fallback.

The compute phase uses ``bench=gemm``'s own step (``compute.step.compute_step``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any


def _nvml_facts(index: int) -> dict[str, Any]:
    """ECC, temperature, clocks and power from NVML, when pynvml is importable."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": False}
    facts: dict[str, Any] = {"nvml": True}
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        facts["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, 0)
        facts["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        facts["max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        facts["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        try:
            facts["ecc_uncorrected"] = pynvml.nvmlDeviceGetTotalEccErrors(
                handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
            )
            facts["ecc_corrected"] = pynvml.nvmlDeviceGetTotalEccErrors(
                handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC
            )
        except pynvml.NVMLError:
            facts["ecc_uncorrected"] = None
        facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as err:  # NVML raises its own error types per call
        facts["nvml_error"] = str(err)
    return facts


def _xid_count() -> int | None:
    """NVIDIA XID lines in the kernel log (None when the log cannot be read)."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sum(1 for line in out.stdout.splitlines() if "NVRM: Xid" in line)


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def inventory_rank(ctx: Any) -> dict[str, Any] | None:
    """Node facts from local rank 0 (None from the other ranks)."""
    if ctx.local_rank != 0:
        return None
    import torch

    from gosok.launcher.ranks.fingerprint import node_fingerprint

    facts = node_fingerprint(ctx)
    facts["local_world_size"] = ctx.local_world_size
    facts["memory_bytes"] = _memory_bytes()
    facts["load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    facts["kernel"] = platform.release()
    if torch.cuda.is_available():
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpu = {
                "index": index,
                "name": props.name,
                "memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
                **_nvml_facts(index),
            }
            gpus.append(gpu)
        facts["gpu_details"] = gpus
        facts["xid_errors"] = _xid_count()
    else:
        facts["gpu_details"] = []
        facts["xid_errors"] = None
    return facts


# --- compute -----------------------------------------------------------------------------


def prepare_rank(ctx: Any, cpu_threads: int) -> dict[str, Any]:
    """CPU fallback only: fixed torch threads, and local rank i pinned to core i mod cores,
    so every emulated node gets the same share of the host whatever the scheduler does."""
    import torch

    if ctx.device != "cpu":
        return {"rank": ctx.rank, "pinned": None}
    torch.set_num_threads(max(1, cpu_threads))
    pinned = None
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        pinned = cores[ctx.local_rank % len(cores)]
        os.sched_setaffinity(0, {pinned})
    return {"rank": ctx.rank, "pinned": pinned, "threads": torch.get_num_threads()}
