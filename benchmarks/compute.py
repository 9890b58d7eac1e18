"""GEMM and HBM bandwidth as registry entries, and the per-rank measurement step.

Every entry declares how it is counted, right beside the code that runs it:

* family ``gemm`` (``gemm_bf16``, ``gemm_fp8_tensorwise``, ``gemm_fp8_rowwise``,
  ``gemm_fp8_blockwise``): ``flops_for(M, N, K) = 2·M·N·K``; TFLOPS = flops / median
  time; the peak is the catalogue's dense Tensor Core figure for the entry's dtype.
* family ``hbm`` (``hbm_copy``, ``hbm_triad``): ``bytes_for(n) = reads + writes`` of
  buffers of n bytes each (copy 2n, triad 3n, the STREAM way); GB/s = bytes / median
  time; the peak is the catalogue's HBM TB/s.

``compute_step`` runs on every rank at once (through ``WorkerGroup.run``) for one
(entry, backend, shape): fresh random normal inputs on the rank's device, FP8
quantisation and layout changes done before any timing, one checked run against the
reference, warm-up, then ``iters`` separately timed calls (CUDA events on GPU,
``time.perf_counter`` on CPU) with an L2 flush (a buffer larger than L2 is zeroed)
before each call and outside its timed span. It returns the raw per-iteration times
and what follows from them. ``measure_compute(group, bench, console)`` runs the whole
plan on a live WorkerGroup and returns one record per (rank, entry, backend, shape);
the acceptance suite calls it per node.

Relative error is ``‖out − ref‖ / ‖ref‖`` with ``ref`` the fp32 product of the
unquantised fp32 inputs (``rel_error``, judged against the entry's tolerance) and, for
GEMMs, also against the reference backend on the same bf16/fp8 operands
(``rel_error_vs_reference_backend``: the kernel's own error).

Importing this module does not import torch; the step and kernels load it when they run.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from gosok.benchmarks.compute_schema import ComputeProfile, resolved_profile
from gosok.benchmarks.registry import BenchmarkEntry, family, get, register

GEMM_TOLERANCES = {"bf16": 1e-2, "fp8": 5e-2}
HBM_TOLERANCE = 1e-6
TRIAD_SCALAR = 3.0
FP8_BACKEND_CHOICES = ("auto", "reference", "scaled_mm", "triton")
BF16_BACKEND_CHOICES = ("torch", "triton")
HBM_BACKEND_CHOICES = ("torch", "triton")


def gemm_flops(m: int, n: int, k: int) -> int:
    """FLOPs of one [M,K] @ [K,N] product: one multiply and one add per term."""
    return 2 * m * n * k


def copy_bytes(n_bytes: int) -> int:
    """Device copy reads the source and writes the destination."""
    return 2 * n_bytes


def triad_bytes(n_bytes: int) -> int:
    """Triad a = b + s·c reads b and c and writes a."""
    return 3 * n_bytes


@dataclass(frozen=True)
class ComputeSpec:
    """What the step needs to know about an entry; stored in the registry entry."""

    kind: str  # gemm | hbm
    peak: str  # catalogue peak key: bf16 / fp8 (TFLOPS) or hbm (TB/s)
    backend_family: str  # key into bench.backends: bf16 | fp8 | hbm
    backends: tuple[str, ...]
    tolerance: float
    recipe: str | None = None
    hbm_kind: str | None = None
    flops_for: Callable[[int, int, int], int] | None = None
    bytes_for: Callable[[int], int] | None = None


def _gemm_entry(name: str, description: str, spec: ComputeSpec) -> None:
    register(
        BenchmarkEntry(
            name=name,
            family="gemm",
            description=description,
            bytes_for=lambda size, n: 0,
            properties={"spec": spec, "flops_for": gemm_flops},
        )
    )


def _hbm_entry(name: str, description: str, spec: ComputeSpec) -> None:
    counted = spec.bytes_for
    assert counted is not None
    register(
        BenchmarkEntry(
            name=name,
            family="hbm",
            description=description,
            bytes_for=lambda size, n: counted(size),
            properties={"spec": spec},
        )
    )


_gemm_entry(
    "gemm_bf16",
    "bf16 x bf16 -> bf16 GEMM (fp32 accumulate)",
    ComputeSpec(
        "gemm", "bf16", "bf16", BF16_BACKEND_CHOICES, GEMM_TOLERANCES["bf16"], flops_for=gemm_flops
    ),
)
for _recipe, _what in (
    ("tensorwise", "one scale per tensor"),
    ("rowwise", "a per row, b per output column"),
    ("blockwise", "a 1x128 tiles, b 128x128 blocks (DeepSeek-V3)"),
):
    _gemm_entry(
        f"gemm_fp8_{_recipe}",
        f"e4m3 x e4m3 -> bf16 GEMM, {_recipe} scales ({_what})",
        ComputeSpec(
            "gemm",
            "fp8",
            "fp8",
            FP8_BACKEND_CHOICES,
            GEMM_TOLERANCES["fp8"],
            recipe=_recipe,
            flops_for=gemm_flops,
        ),
    )
_hbm_entry(
    "hbm_copy",
    "device-to-device copy dst = src (reads + writes)",
    ComputeSpec("hbm", "hbm", "hbm", ("torch",), 0.0, hbm_kind="copy", bytes_for=copy_bytes),
)
_hbm_entry(
    "hbm_triad",
    "STREAM triad a = b + s*c (reads + writes)",
    ComputeSpec(
        "hbm",
        "hbm",
        "hbm",
        HBM_BACKEND_CHOICES,
        HBM_TOLERANCE,
        hbm_kind="triad",
        bytes_for=triad_bytes,
    ),
)


def compute_entries() -> dict[str, BenchmarkEntry]:
    """Every gemm and hbm entry, by name."""
    return {**family("gemm"), **family("hbm")}


def spec_of(entry_name: str) -> ComputeSpec:
    return get(entry_name).properties["spec"]


# --- shapes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerDims:
    """The projection sizes of one decoder layer (GQA attention + gated MLP)."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    def layers(self) -> dict[str, tuple[int, int]]:
        """Layer name -> (N, K) of its weight GEMM; M is the token count."""
        qkv = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        return {
            "qkv": (qkv, self.hidden),
            "o_proj": (self.hidden, self.q_heads * self.head_dim),
            "mlp_up": (self.ffn, self.hidden),  # gate and up each have this shape
            "mlp_down": (self.hidden, self.ffn),
        }


TRANSFORMER_MODELS: dict[str, TransformerDims] = {
    # hidden 8192, 64 query heads and 8 KV heads of 128: QKV out (64 + 2·8)·128 = 10240.
    "llama3_70b": TransformerDims(8192, 64, 8, 128, 28672),
    "llama3_8b": TransformerDims(4096, 32, 8, 128, 14336),
    # Llama-3-70B with head_dim 4: every projection 1/32 of the real one (CPU smoke runs).
    "llama3_70b_mini": TransformerDims(256, 64, 8, 4, 896),
}


def transformer_shape_names() -> list[str]:
    """Every ``<model>.<layer>`` name the config may list."""
    return [f"{m}.{layer}" for m, dims in TRANSFORMER_MODELS.items() for layer in dims.layers()]


@dataclass(frozen=True)
class Shape:
    """One measured size: a GEMM [M,K] @ [K,N], or an HBM buffer of n_bytes."""

    name: str
    m: int = 0
    n: int = 0
    k: int = 0
    n_bytes: int = 0

    def label(self) -> str:
        if self.n_bytes:
            return f"{self.n_bytes / (1 << 20):g} MiB"
        return f"{self.m}x{self.n}x{self.k}"


def gemm_shapes(profile: ComputeProfile) -> list[Shape]:
    """Squares first, then each transformer layer at each token count."""
    shapes = [Shape(f"square_{s}", s, s, s) for s in profile.squares]
    for name in profile.transformer:
        model, layer = name.split(".")
        n, k = TRANSFORMER_MODELS[model].layers()[layer]
        shapes += [Shape(f"{name}@{tokens}", tokens, n, k) for tokens in profile.tokens]
    return shapes


def hbm_shape(profile: ComputeProfile) -> Shape:
    return Shape(f"hbm_{profile.hbm_bytes}", n_bytes=profile.hbm_bytes)


def backends_for(entry_name: str, requested: dict[str, list[str]] | Any) -> list[str]:
    """The configured backends of the entry's family that the entry can run."""
    spec = spec_of(entry_name)
    return [b for b in requested.get(spec.backend_family, []) if b in spec.backends]


def measurement_plan(bench: Any, profile: ComputeProfile) -> list[tuple[str, str, Shape]]:
    """(entry, backend, shape) in the order they are measured."""
    plan = []
    for entry_name in bench.entries:
        spec = spec_of(entry_name)
        shapes = gemm_shapes(profile) if spec.kind == "gemm" else [hbm_shape(profile)]
        for backend in backends_for(entry_name, bench.backends):
            plan += [(entry_name, backend, shape) for shape in shapes]
    return plan


# --- formulas shared by the driver, the report and the sweep ------------------------------


def time_stats(times_us: list[float]) -> dict[str, float]:
    return {
        "median_us": statistics.median(times_us),
        "mean_us": statistics.fmean(times_us),
        "max_us": max(times_us),
        "min_us": min(times_us),
    }


def tflops_from(flops: int, time_us: float) -> float:
    return flops / (time_us * 1e-6) / 1e12


def gbps_from(n_bytes: int, time_us: float) -> float:
    return n_bytes / (time_us * 1e-6) / 1e9


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


def time_each(
    fn: Callable[[], Any], flush: Callable[[], None], warmup_iters: int, iters: int, device: Any
) -> list[float]:
    """Seconds of each of ``iters`` calls; ``flush`` runs before each, outside the timing."""
    import torch

    for _ in range(warmup_iters):
        flush()
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends, strict=True):
            flush()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
    seconds = []
    for _ in range(iters):
        flush()
        begin = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - begin)
    return seconds


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
    spec: ComputeSpec, backend: str, shape: Shape, device: Any, generator: Any
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


def _prepare_hbm(spec: ComputeSpec, backend: str, shape: Shape, device: Any) -> Prepared:
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


def _barrier(device: Any) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


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
        "timing_method": "cuda events per iteration"
        if device.type == "cuda"
        else "time.perf_counter per iteration",
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
        _barrier(device)
    seconds = time_each(prepared.run, flush, warmup_iters, iters, device)
    times_us = [s * 1e6 for s in seconds]
    record["times_us"] = times_us
    record.update(time_stats(times_us))
    if spec.kind == "gemm":
        record["tflops"] = tflops_from(record["flops"], record["median_us"])
    else:
        record["gbps"] = gbps_from(record["bytes"], record["median_us"])
    return record


# --- peaks and verdicts -------------------------------------------------------------------


def peak_for(spec_entry: ComputeSpec, gpu: Any) -> tuple[float | None, str]:
    """(peak in the record's unit, unit): TFLOPS for GEMMs, GB/s for HBM."""
    from gosok.launcher.catalogue import peak_tflops

    if spec_entry.kind == "gemm":
        return peak_tflops(gpu, spec_entry.peak), "TFLOPS"
    return (gpu.hbm_tbps * 1000.0 if gpu.hbm_tbps else None), "GB/s"


def annotate(record: dict[str, Any], gpu: Any, min_pct_of_peak: float) -> dict[str, Any]:
    """Add the catalogue peak, % of peak, the tolerance and pass/fail to a step record."""
    from gosok.launcher.catalogue import is_cpu

    spec = spec_of(record["entry"])
    peak, unit = peak_for(spec, gpu)
    record["peak"] = peak
    record["peak_unit"] = unit
    record["peak_is_estimate"] = is_cpu(gpu)
    record["tolerance"] = spec.tolerance
    record["min_pct_of_peak"] = min_pct_of_peak
    if record["skipped"]:
        record["pct_of_peak"] = None
        record["passed"] = True
        return record
    value = record["tflops"] if spec.kind == "gemm" else record["gbps"]
    record["pct_of_peak"] = 100.0 * value / peak if peak else None
    problems = []
    if not record["rel_error"] <= spec.tolerance:
        problems.append(f"relative error {record['rel_error']:.2e} > tolerance {spec.tolerance:g}")
    kernel_error = record.get("rel_error_vs_reference_backend")
    if kernel_error is not None and not kernel_error <= spec.tolerance:
        problems.append(
            f"relative error vs the reference backend {kernel_error:.2e} > {spec.tolerance:g}"
        )
    if record["pct_of_peak"] is not None and record["pct_of_peak"] < min_pct_of_peak:
        problems.append(f"{record['pct_of_peak']:.1f}% of peak < min_pct_of_peak {min_pct_of_peak}")
    record["problems"] = problems
    record["passed"] = not problems
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
    from gosok.benchmarks.gemm_report import format_header, format_row, format_summary_row
    from gosok.launcher.catalogue import gpu_spec, is_cpu

    gpu_key = gpu_key or group.cluster.gpu
    gpu = gpu_spec(gpu_key)
    profile = resolved_profile(bench, gpu_key)
    plan = measurement_plan(bench, profile)
    per_gpu_rows = len(group.actors) <= bench.max_table_ranks
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
        if console is not None:
            rows = [format_row(r) for r in new] if per_gpu_rows else [format_summary_row(new)]
            for row in rows:
                console.print(f"{row}   [{done}/{len(plan)}]", highlight=False, markup=False)
        records += new
    return records
