"""The one place gosok times anything on a rank: collectives, GEMM, HBM, the suite.

Two methods, each the field's convention for what it measures, both recorded in results:

- ``time_back_to_back(fn, iters, device)`` (collectives, as nccl-tests): ``iters`` calls
  back to back, one span, stamped between calls (CUDA events recorded on the stream, which
  do not synchronise it); returns each call's seconds, which sum to the span, so their mean
  is nccl-tests' time per call and their spread is its ``-I 1`` per-iteration view.
- ``time_samples(fn, device, samples, warmup, flush, min_sample_s)`` (GEMM and HBM, as
  mamf-finder): each sample is preceded by ``flush`` (an L2 flush) outside the timed span
  and times one call, or as many back-to-back calls as fill ``min_sample_s`` (a window
  longer than a scheduler period, so a CPU quota or a clock throttle shows); returns
  seconds per call of each sample. ``GEMM_METHOD`` describes it for results files.

GPU spans use CUDA events; CPU spans ``time.perf_counter``. torch loads on first use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

GEMM_METHOD = "per-sample, L2 flushed before each sample, median of samples"
COLLECTIVE_METHOD = "barrier, then iters back-to-back calls; mean per call"


def clock_name(device: Any) -> str:
    return "cuda events" if device.type == "cuda" else "time.perf_counter"


def synchronize(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def barrier(device: Any, group: Any = None) -> None:
    """A torch.distributed barrier (no-op without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if device.type == "cuda":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def time_back_to_back(fn: Callable[[], Any], iters: int, device: Any) -> list[float]:
    """Seconds of each of ``iters`` back-to-back calls (they sum to the whole span)."""
    if device.type == "cuda":
        import torch

        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        events[0].record()
        for event in events[1:]:
            fn()
            event.record()
        events[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:], strict=False)]
    stamps = [time.perf_counter()]
    for _ in range(iters):
        fn()
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _cuda_sample(fn: Callable[[], Any], device: Any, min_sample_s: float) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    calls = 0
    start.record()
    began = time.perf_counter()
    while True:
        fn()
        calls += 1
        if min_sample_s <= 0:
            break
        torch.cuda.synchronize(device)
        if time.perf_counter() - began >= min_sample_s:
            break
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def _cpu_sample(fn: Callable[[], Any], min_sample_s: float) -> float:
    calls = 0
    began = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - began
        if elapsed >= min_sample_s:
            return elapsed / calls


def time_samples(
    fn: Callable[[], Any],
    device: Any,
    samples: int,
    warmup: int = 0,
    flush: Callable[[], Any] | None = None,
    min_sample_s: float = 0.0,
) -> list[float]:
    """Seconds per call of each sample; ``flush`` runs before each, outside the timing."""
    flush = flush or (lambda: None)
    for _ in range(warmup):
        flush()
        fn()
    synchronize(device)
    out = []
    for _ in range(samples):
        flush()
        if device.type == "cuda":
            out.append(_cuda_sample(fn, device, min_sample_s))
        else:
            out.append(_cpu_sample(fn, min_sample_s))
    return out
