"""Compute kernels as typed records, and everything about them that is pure: how each is
counted, the shapes and the measurement plan, the statistics, peaks and verdicts.

* ``gemm_bf16``, ``gemm_fp8_tensorwise|rowwise|blockwise``: ``flops = 2·M·N·K``;
  TFLOPS = flops / median time; the peak is the catalogue's dense Tensor Core figure.
* ``hbm_copy``, ``hbm_triad``: bytes = reads + writes of buffers of n bytes (copy 2n,
  triad 3n, the STREAM way); GB/s = bytes / median time; the peak is the catalogue's HBM.

Use: ``KERNELS["gemm_bf16"].flops_for(m, n, k)``; ``measurement_plan(bench, profile)``.
No torch is imported here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gosok.benchmarks.compute.schema import ComputeProfile
from gosok.benchmarks.core.registry import Registry

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
class ComputeKernel:
    """One measured kernel: how it is counted, its peak, backends and tolerance."""

    name: str
    description: str
    kind: str  # gemm | hbm
    peak: str  # catalogue peak key: bf16 / fp8 (TFLOPS) or hbm (TB/s)
    backend_family: str  # key into bench.backends: bf16 | fp8 | hbm
    backends: tuple[str, ...]
    tolerance: float
    recipe: str | None = None
    hbm_kind: str | None = None
    flops_for: Callable[[int, int, int], int] | None = None
    bytes_for: Callable[[int], int] | None = None


KERNELS: Registry[ComputeKernel] = Registry("compute kernel")
for _kernel in (
    ComputeKernel(
        "gemm_bf16", "bf16 x bf16 -> bf16 GEMM (fp32 accumulate)",
        "gemm", "bf16", "bf16", BF16_BACKEND_CHOICES, GEMM_TOLERANCES["bf16"],
        flops_for=gemm_flops,
    ),
    *(
        ComputeKernel(
            f"gemm_fp8_{recipe}", f"e4m3 x e4m3 -> bf16 GEMM, {recipe} scales ({what})",
            "gemm", "fp8", "fp8", FP8_BACKEND_CHOICES, GEMM_TOLERANCES["fp8"],
            recipe=recipe, flops_for=gemm_flops,
        )
        for recipe, what in (
            ("tensorwise", "one scale per tensor"),
            ("rowwise", "a per row, b per output column"),
            ("blockwise", "a 1x128 tiles, b 128x128 blocks (DeepSeek-V3)"),
        )
    ),
    ComputeKernel(
        "hbm_copy", "device-to-device copy dst = src (reads + writes)",
        "hbm", "hbm", "hbm", ("torch",), 0.0, hbm_kind="copy", bytes_for=copy_bytes,
    ),
    ComputeKernel(
        "hbm_triad", "STREAM triad a = b + s*c (reads + writes)",
        "hbm", "hbm", "hbm", HBM_BACKEND_CHOICES, HBM_TOLERANCE,
        hbm_kind="triad", bytes_for=triad_bytes,
    ),
):  # fmt: skip
    KERNELS.add(_kernel.name, _kernel)


def spec_of(entry_name: str) -> ComputeKernel:
    return KERNELS[entry_name]


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


# --- peaks and verdicts -------------------------------------------------------------------


def peak_for(spec_entry: ComputeKernel, gpu: Any) -> tuple[float | None, str]:
    """(peak in the record's unit, unit): TFLOPS for GEMMs, GB/s for HBM."""
    from gosok.launcher.config.catalogue import peak_tflops

    if spec_entry.kind == "gemm":
        return peak_tflops(gpu, spec_entry.peak), "TFLOPS"
    return (gpu.hbm_tbps * 1000.0 if gpu.hbm_tbps else None), "GB/s"


def annotate(record: dict[str, Any], gpu: Any, min_pct_of_peak: float) -> dict[str, Any]:
    """Add the catalogue peak, % of peak, the tolerance and pass/fail to a step record."""
    from gosok.launcher.config.catalogue import is_cpu

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
