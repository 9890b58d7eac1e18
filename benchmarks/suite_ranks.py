"""Rank functions of the acceptance suite: run on every rank through ``WorkerGroup.run``.

- ``inventory_rank``: local rank 0 of each node describes the node (GPU model, count,
  memory, driver / CUDA / NCCL / torch versions; ECC, XID, temperature and clocks when
  NVML is present; CPU model, cores and memory on the CPU fallback).
- ``compute_rank``: FP8 and BF16 GEMM and HBM (STREAM triad) bandwidth on this rank's
  GPU, every rank at the same time (a world barrier before each repeat), so a slow GPU is
  measured under the same conditions as its neighbours.

The GEMM and triad kernels come from ``gosok.kernels`` (FP8 reference path on CPU,
``_scaled_mm`` / Triton on GPUs); without that package a plain ``torch.matmul`` stands
in. ``gemm_op`` is the single place to switch to a shared per-rank compute benchmark.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
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

    from gosok.launcher.fingerprint import node_fingerprint

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


def gemm_op(dtype: str, size: int, device: Any, recipe: str, backend: str) -> tuple[Callable, str]:
    """A zero-argument GEMM of size^3 in ``dtype`` on ``device``, and the backend name."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(1234)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    try:
        from gosok.kernels import gemm as kernels_gemm
        from gosok.kernels.quant import quantize_operands
    except ImportError:
        kernels_gemm = None
    if dtype == "bf16":
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
        if kernels_gemm is not None:
            return (lambda: kernels_gemm.bf16_gemm(a16, b16)), "kernels.bf16_gemm torch"
        return (lambda: torch.matmul(a16, b16)), "torch.matmul bf16"
    if dtype == "fp8":
        if kernels_gemm is None:
            return (lambda: torch.matmul(a, b)), "torch.matmul fp32 (no gosok.kernels)"
        chosen = kernels_gemm.select_backend(device, recipe, backend)
        qa, sa, qb, sb = quantize_operands(a, b, recipe)
        if chosen == "scaled_mm":
            from gosok.kernels.scaled_mm import to_column_major

            qb = to_column_major(qb)
        return (
            lambda: kernels_gemm.fp8_gemm_quantized(qa, sa, qb, sb, recipe, chosen)
        ), f"kernels.fp8_gemm_quantized {recipe} {chosen}"
    raise ValueError(f"unknown gemm dtype {dtype!r}")


def triad_op(n_bytes: int, device: Any) -> tuple[Callable[[], Any], int]:
    """STREAM triad a = b + 3c over buffers of ``n_bytes``; returns (call, bytes per call)."""
    import torch

    try:
        from gosok.kernels.hbm import make_buffers, stream_triad
    except ImportError:
        numel = n_bytes // 4
        a, b, c = (torch.empty(numel, device=device) for _ in range(3))
        return (lambda: torch.add(b, c, alpha=3.0, out=a)), 3 * numel * 4
    a, b, c = make_buffers("triad", n_bytes, device=device)
    moved = stream_triad(a, b, c, 3.0)
    return (lambda: stream_triad(a, b, c, 3.0)), moved


def _timed_repeats(
    fn: Callable[[], Any], warmup: int, iters: int, repeats: int, device: Any, min_s: float
) -> list[float]:
    """Seconds per call, one figure per repeat; every rank starts each repeat together.

    A repeat runs ``iters`` calls, then more blocks of ``iters`` until ``min_s`` has
    passed: a window much longer than a scheduler period, so a CPU quota or a clock
    throttle shows up instead of hiding inside one burst."""
    import torch
    import torch.distributed as dist

    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()
        begin = time.perf_counter()
        calls = 0
        while True:
            for _ in range(iters):
                fn()
            calls += iters
            if cuda:
                torch.cuda.synchronize(device)
            if time.perf_counter() - begin >= min_s:
                break
        samples.append((time.perf_counter() - begin) / calls)
    return samples


def compute_rank(ctx: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """GEMM TFLOPS per dtype and triad GB/s on this rank (median over repeats)."""
    import statistics

    import torch

    device = ctx.torch_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(settings["cpu_threads"])))
    size = int(settings["gemm_size"])
    flops = 2.0 * size**3
    out: dict[str, Any] = {
        "rank": ctx.rank,
        "node_rank": ctx.node_rank,
        "local_rank": ctx.local_rank,
        "device": str(device),
        "gemm": {},
        "hbm": None,
    }
    for dtype in settings["gemm_dtypes"]:
        fn, backend = gemm_op(dtype, size, device, settings["fp8_recipe"], settings["fp8_backend"])
        seconds = _timed_repeats(
            fn,
            settings["warmup_iters"],
            settings["iters"],
            settings["repeats"],
            device,
            settings["min_repeat_s"],
        )
        tflops = [flops / s / 1e12 for s in seconds]
        out["gemm"][dtype] = {
            "m": size,
            "n": size,
            "k": size,
            "backend": backend,
            "seconds": seconds,
            "tflops_samples": tflops,
            "tflops": statistics.median(tflops),
        }
    if settings["hbm"]:
        triad, moved = triad_op(int(settings["hbm_bytes"]), device)
        seconds = _timed_repeats(
            triad,
            settings["warmup_iters"],
            settings["iters"],
            settings["repeats"],
            device,
            settings["min_repeat_s"],
        )
        gbps = [moved / s / 1e9 for s in seconds]
        out["hbm"] = {
            "kind": "triad",
            "bytes_per_call": moved,
            "buffer_bytes": int(settings["hbm_bytes"]),
            "gbps_samples": gbps,
            "gbps": statistics.median(gbps),
        }
    return out
