"""The per-rank GEMM / HBM step, shared by ``bench=gemm`` and the suite's compute phase.

``compute_step`` runs on every rank at once (through ``WorkerGroup.run``) for one
(kernel, backend, shape): fresh random normal inputs on the rank's device, FP8
quantisation and layout changes done before any timing, one checked run against the
reference, warm-up, then ``iters`` samples timed by ``core.timing.time_samples`` with an
L2 flush before each (``GEMM_METHOD``). It returns the raw per-sample times and what
follows from them. ``measure_compute(group, bench, console)`` runs a whole plan.

Relative error is ``‖out − ref‖ / ‖ref‖`` with ``ref`` the fp32 product of the
unquantised fp32 inputs (``rel_error``) and, for GEMMs, also against the reference
backend on the same bf16/fp8 operands (``rel_error_vs_reference_backend``).
Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import platform
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from gosok.benchmarks.compute.entries import (
    TRIAD_SCALAR,
    ComputeKernel,
    Shape,
    annotate,
    gbps_from,
    measurement_plan,
    spec_of,
    tflops_from,
    time_stats,
)
from gosok.benchmarks.compute.schema import resolved_profile
from gosok.benchmarks.core.timing import GEMM_METHOD, barrier, clock_name, time_samples
from gosok.launcher.results.journal import note

# --- the per-rank step --------------------------------------------------------------------


@dataclass
class LocalContext:
    """A one-process stand-in for a rank context (the standalone sweep uses it)."""

    device: str = "cpu"
    rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    node_id: str = "local"
    hostname: str = field(default_factory=platform.node)
    state: dict[str, Any] = field(default_factory=dict)

    def torch_device(self):
        import torch

        return torch.device(self.device)


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def _flush_fn(ctx: Any, device: Any, flush_l2: bool, flush_bytes: int) -> Callable[[], None]:
    import torch

    if not flush_l2:
        return lambda: None
    key = (str(device), flush_bytes)
    held = ctx.state.get("l2_flush")
    if held is None or held[0] != key:
        ctx.state["l2_flush"] = (key, torch.empty(flush_bytes, dtype=torch.int8, device=device))
    return ctx.state["l2_flush"][1].zero_


def relative_error(out: Any, ref: Any) -> float:
    """‖out − ref‖ / ‖ref‖, computed in ref's dtype (fp32 for GEMMs, fp64 for triad)."""
    return float((out.to(ref.dtype) - ref).norm() / ref.norm())


@dataclass
class Prepared:
    """A ready-to-time call and its correctness figures (computed before timing)."""

    run: Callable[[], Any]
    backend_used: str
    rel_error: float
    rel_error_vs_reference_backend: float | None


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """fp32 matmuls in full fp32 (no TF32) while the references are computed."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _prepare_gemm(
    spec: ComputeKernel, backend: str, shape: Shape, device: Any, generator: Any
) -> Prepared:
    import torch

    from gosok.kernels.gemm import bf16_gemm, fp8_gemm_quantized, select_backend
    from gosok.kernels.quant import quantize_operands
    from gosok.kernels.scaled_mm import to_column_major

    a = torch.randn(shape.m, shape.k, device=device, generator=generator)
    b = torch.randn(shape.k, shape.n, device=device, generator=generator)
    with _exact_fp32():
        ref = a @ b
    if spec.recipe is None:
        a16, b16 = a.bfloat16(), b.bfloat16()
        with _exact_fp32():
            backend_ref = a16.float() @ b16.float()

        def run() -> Any:
            return bf16_gemm(a16, b16, backend)

        used = backend
    else:
        recipe = spec.recipe
        used = select_backend(device, recipe, backend)
        qa, sa, qb, sb = quantize_operands(a, b, recipe)
        with _exact_fp32():
            backend_ref = fp8_gemm_quantized(qa, sa, qb, sb, recipe, "reference").float()
        if used == "scaled_mm":
            qb = to_column_major(qb)

        def run() -> Any:
            return fp8_gemm_quantized(qa, sa, qb, sb, recipe, used)

    out = run()
    prepared = Prepared(run, used, relative_error(out, ref), relative_error(out, backend_ref))
    del a, b, ref, backend_ref, out
    return prepared


def _prepare_hbm(spec: ComputeKernel, backend: str, shape: Shape, device: Any) -> Prepared:
    from gosok.kernels.hbm import device_copy, hbm_bytes, make_buffers, stream_triad

    kind = spec.hbm_kind
    assert kind is not None and spec.bytes_for is not None
    if hbm_bytes(kind, shape.n_bytes) != spec.bytes_for(shape.n_bytes):
        raise AssertionError(f"{kind}: kernel and entry count bytes differently")
    if kind == "copy":
        dst, src = make_buffers("copy", shape.n_bytes, device)

        def run() -> Any:
            return device_copy(dst, src)

        run()
        return Prepared(run, backend, relative_error(dst.double(), src.double()), None)
    a, b, c = make_buffers("triad", shape.n_bytes, device)

    def run() -> Any:
        return stream_triad(a, b, c, TRIAD_SCALAR, backend)

    run()
    want = b.double() + TRIAD_SCALAR * c.double()
    return Prepared(run, backend, relative_error(a, want), None)


def compute_step(
    ctx: Any,
    entry_name: str,
    backend: str,
    shape: dict[str, Any],
    warmup_iters: int,
    iters: int,
    flush_l2: bool,
    flush_bytes: int,
    seed: int = 0,
    cpu_threads: int = 1,
    sync_start: bool = True,
    min_sample_s: float = 0.0,
) -> dict[str, Any]:
    """Measure one (entry, backend, shape) on this rank; runs on every rank at once."""
    import torch

    from gosok.kernels.errors import KernelUnsupportedError

    spec = spec_of(entry_name)
    measured = Shape(**shape)
    device = ctx.torch_device()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads)
    record: dict[str, Any] = {
        "entry": entry_name,
        "family": spec.kind,
        "dtype": spec.peak if spec.kind == "gemm" else "float32",
        "recipe": spec.recipe,
        "backend": backend,
        "shape": asdict(measured),
        "rank": getattr(ctx, "rank", 0),
        "node_rank": ctx.node_rank,
        "local_rank": ctx.local_rank,
        "node_id": ctx.node_id,
        "hostname": ctx.hostname,
        "device": str(device),
        "device_name": device_name(device),
        "timing": {
            "method": GEMM_METHOD,
            "clock": clock_name(device),
            "flush_l2": flush_l2,
            "flush_bytes": flush_bytes if flush_l2 else 0,
            "warmup_iters": warmup_iters,
            "samples": iters,
            "min_sample_s": min_sample_s,
        },
        "skipped": None,
    }
    if spec.kind == "gemm":
        assert spec.flops_for is not None
        record["flops"] = spec.flops_for(measured.m, measured.n, measured.k)
    else:
        assert spec.bytes_for is not None
        record["bytes"] = spec.bytes_for(measured.n_bytes)
    # Same seed on every rank and a per-rank offset: fresh, distinct inputs per GPU.
    seed_value = seed + 7919 * record["rank"] + zlib.crc32(measured.name.encode()) % 100_003
    try:
        if spec.kind == "gemm":
            generator = torch.Generator(device=device).manual_seed(seed_value)
            prepared = _prepare_gemm(spec, backend, measured, device, generator)
        else:
            torch.manual_seed(seed_value)
            prepared = _prepare_hbm(spec, backend, measured, device)
    except KernelUnsupportedError as err:
        record["skipped"] = str(err)
        return record
    record["backend_used"] = prepared.backend_used
    record["rel_error"] = prepared.rel_error
    record["rel_error_vs_reference_backend"] = prepared.rel_error_vs_reference_backend
    flush = _flush_fn(ctx, device, flush_l2, flush_bytes)
    if sync_start:
        barrier(device)
    seconds = time_samples(prepared.run, device, iters, warmup_iters, flush, min_sample_s)
    times_us = [s * 1e6 for s in seconds]
    record["times_us"] = times_us
    record.update(time_stats(times_us))
    if spec.kind == "gemm":
        record["tflops"] = tflops_from(record["flops"], record["median_us"])
    else:
        record["gbps"] = gbps_from(record["bytes"], record["median_us"])
    return record


def measure_compute(
    group: Any,
    bench: Any,
    console: Any,
    gpu_key: str | None = None,
    seed: int = 1234,
) -> list[dict[str, Any]]:
    """Run the whole plan on every rank of ``group`` at once; one record per rank and step.

    Prints the table to ``console`` as each step finishes (a row per GPU, or a row per
    step with the spread across GPUs when there are more than ``bench.max_table_ranks``).
    Records carry node_rank, local_rank, node_id, hostname and device_name so the caller
    can judge each node and each GPU. ``console=None`` prints nothing.
    """
    from gosok.benchmarks.compute.report import format_header, format_row, format_summary_row
    from gosok.launcher.config.catalogue import gpu_spec, is_cpu

    gpu_key = gpu_key or group.cluster.gpu
    gpu = gpu_spec(gpu_key)
    profile = resolved_profile(bench, gpu_key)
    plan = measurement_plan(bench, profile)
    per_gpu_rows = len(group.rank_info) <= bench.max_table_ranks
    if console is not None:
        console.print(format_header(is_cpu(gpu), per_gpu_rows), highlight=False, markup=False)
    records: list[dict[str, Any]] = []
    for done, (entry_name, backend, shape) in enumerate(plan, start=1):
        per_rank = group.run(
            compute_step,
            entry_name,
            backend,
            asdict(shape),
            profile.warmup_iters,
            profile.iters,
            bench.flush_l2,
            profile.flush_bytes,
            seed,
            bench.cpu_threads,
            timeout_s=bench.timeout_s,
        )
        new = [annotate(r, gpu, bench.min_pct_of_peak) for r in per_rank]
        for record in new:
            note("gemm", record)
        if console is not None:
            rows = [format_row(r) for r in new] if per_gpu_rows else [format_summary_row(new)]
            for row in rows:
                console.print(f"{row}   [{done}/{len(plan)}]", highlight=False, markup=False)
        records += new
    return records
