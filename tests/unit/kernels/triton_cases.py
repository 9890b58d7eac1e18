"""Runs every Triton kernel case once and prints the measured errors as one JSON line.

``test_kernels_triton.py`` starts this script in a fresh Python process, because
``triton.jit`` fixes interpreter-vs-compiled mode when a kernel is decorated and other
test modules may already have imported ``gosok.kernels`` in the pytest process. The
pytest side asserts the tolerances; this side only measures, recording a traceback
instead of a number when a case fails. Standalone:

    TRITON_INTERPRET=1 python tests/unit/kernels/triton_cases.py --device cpu
    python tests/unit/kernels/triton_cases.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import traceback
from collections.abc import Callable

import torch

from gosok.kernels.errors import KernelUnsupportedError
from gosok.kernels.gemm import bf16_gemm, fp8_gemm, fp8_gemm_quantized
from gosok.kernels.hbm import make_buffers, stream_triad
from gosok.kernels.quant import (
    BLOCK,
    E5M2,
    RECIPES,
    dequantize_operands,
    expand_block_scale,
    quantize_operands,
)
from gosok.kernels.scaled_mm import to_column_major

FP8_SHAPES: dict[str, tuple[int, int, int]] = {"aligned": (128, 256, 192), "ragged": (96, 200, 80)}
BF16_SHAPES: dict[str, tuple[int, int, int]] = {"aligned": (128, 192, 160), "ragged": (96, 200, 80)}
TRIAD_NUMEL = 10_000


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def profiled_normal(
    rows: int, cols: int, block_rows: int, block_cols: int, gen: torch.Generator
) -> torch.Tensor:
    """Random normal whose magnitude varies by a power of two per block (scales must matter)."""
    grid = (-(-rows // block_rows), -(-cols // block_cols))
    exponents = torch.randint(-3, 4, grid, generator=gen).float()
    magnitude = expand_block_scale(torch.exp2(exponents), block_rows, block_cols, (rows, cols))
    return torch.randn(rows, cols, generator=gen) * magnitude


def fp8_case(recipe: str, shape: tuple[int, int, int], device: str) -> dict:
    m, k, n = shape
    gen = torch.Generator().manual_seed(1000 * RECIPES.index(recipe) + sum(shape))
    a = profiled_normal(m, k, 1, BLOCK, gen).to(device)
    b = profiled_normal(k, n, BLOCK, BLOCK, gen).to(device)
    qa, sa, qb, sb = quantize_operands(a, b, recipe)
    out = fp8_gemm_quantized(qa, sa, qb, sb, recipe, backend="triton")
    out_cm = fp8_gemm_quantized(qa, sa, to_column_major(qb), sb, recipe, backend="triton")
    a32, b32 = dequantize_operands(qa, sa, qb, sb, recipe)
    ref = a32 @ b32

    plain_a = torch.randn(m, k, generator=gen).to(device)
    plain_b = torch.randn(k, n, generator=gen).to(device)
    plain_out = fp8_gemm(plain_a, plain_b, recipe, backend="triton")
    return {
        "dtype": str(out.dtype),
        "shape": list(out.shape),
        "vs_quantized": relative_error(out, ref),
        "column_major_b_vs_quantized": relative_error(out_cm, ref),
        "vs_fp32": relative_error(plain_out, plain_a @ plain_b),
    }


def bf16_case(shape: tuple[int, int, int], device: str) -> dict:
    m, k, n = shape
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(m, k, generator=gen).to(device, torch.bfloat16)
    b = torch.randn(k, n, generator=gen).to(device, torch.bfloat16)
    out = bf16_gemm(a, b, backend="triton")
    return {
        "dtype": str(out.dtype),
        "shape": list(out.shape),
        "vs_fp32": relative_error(out, a.float() @ b.float()),
    }


def triad_case(device: str) -> dict:
    a, b, c = make_buffers("triad", TRIAD_NUMEL * 4, device=device)
    moved = stream_triad(a, b, c, 3.0, backend="triton")
    return {
        "bytes_moved": moved,
        "max_abs_diff": float((a - (b + 3.0 * c)).abs().max()),
    }


def e5m2_rejected_case(device: str) -> dict:
    a = torch.randn(64, 64, device=device)
    qa, sa, qb, sb = quantize_operands(a, a, "tensorwise", E5M2)
    try:
        fp8_gemm_quantized(qa, sa, qb, sb, "tensorwise", backend="triton")
    except KernelUnsupportedError as exc:
        return {"raised": True, "message": str(exc)}
    return {"raised": False, "message": ""}


def kernel_modes() -> dict:
    from gosok.kernels.triton import bf16_gemm as triton_bf16_gemm
    from gosok.kernels.triton import fp8_gemm as triton_fp8_gemm
    from gosok.kernels.triton import triad as triton_triad

    return {
        "fp8_interpreted": triton_fp8_gemm.INTERPRETED,
        "bf16_interpreted": triton_bf16_gemm.INTERPRETED,
        "triad_interpreted": triton_triad.INTERPRETED,
    }


def run_case(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception:
        return {"error": traceback.format_exc()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = parser.parse_args().device
    results: dict[str, dict] = {}
    for recipe in RECIPES:
        for name, shape in FP8_SHAPES.items():
            results[f"fp8-{recipe}-{name}"] = run_case(
                lambda r=recipe, s=shape: fp8_case(r, s, device)
            )
    for name, shape in BF16_SHAPES.items():
        results[f"bf16-{name}"] = run_case(lambda s=shape: bf16_case(s, device))
    results["triad"] = run_case(lambda: triad_case(device))
    results["e5m2-rejected"] = run_case(lambda: e5m2_rejected_case(device))
    results["modes"] = run_case(kernel_modes)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
