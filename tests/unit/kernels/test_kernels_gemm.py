"""FP8/BF16 GEMM interface: reference and scaled_mm backends, backend choice, clear errors.

Run: ``pytest tests/kernels/test_kernels_gemm.py`` (a few seconds on CPU). The Triton
backend's numerics are tested in ``test_kernels_triton.py`` (interpreter subprocess).

Tolerances (relative Frobenius error ‖out − ref‖ / ‖ref‖), ``ref`` being the fp32
matmul of the dequantised operands:

* bf16 output vs ``ref``: < 5e-3. The only differences are fp32 summation order (~1e-6)
  and rounding the output to bf16 (8 significant bits, round to nearest even), which
  bounds each element's relative error, hence the norm-wise one, by 2^-8 ≈ 3.9e-3.
* fp32 output of the reference backend vs ``ref``: < 1e-6 (same computation).
* FP8 GEMM vs the unquantised fp32 matmul of N(0,1) inputs: between 2e-2 and 5e-2
  (measured ≈ 3.7% for all recipes; e4m3 keeps 3 mantissa bits).
"""

from __future__ import annotations

import pytest
import torch

from gosok.kernels import gemm
from gosok.kernels.errors import KernelUnsupportedError
from gosok.kernels.gemm import (
    bf16_gemm,
    fp8_gemm,
    fp8_gemm_quantized,
    select_backend,
)
from gosok.kernels.quant import E4M3, E5M2, RECIPES, dequantize_operands, quantize_operands
from gosok.kernels.scaled_mm import to_column_major
from gosok.kernels.triton.env import interpreter_requested, triton_installed

BF16_OUT_TOL = 5e-3
FP8_VS_FP32_RANGE = (2e-2, 5e-2)
SHAPE = (96, 256, 160)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _operands(
    m: int, k: int, n: int, seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    return a.to(device), b.to(device)


def _quantized_reference(
    qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor, recipe: str
) -> torch.Tensor:
    a32, b32 = dequantize_operands(qa, sa, qb, sb, recipe)
    return a32 @ b32


def _scaled_mm_devices() -> list[str]:
    fp8_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
    return ["cpu", "cuda"] if fp8_gpu else ["cpu"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_reference_backend_is_fp32_matmul_of_dequantised_operands(recipe: str) -> None:
    a, b = _operands(*SHAPE, seed=1)
    qa, sa, qb, sb = quantize_operands(a, b, recipe)
    ref = _quantized_reference(qa, sa, qb, sb, recipe)
    out32 = fp8_gemm_quantized(qa, sa, qb, sb, recipe, "reference", torch.float32)
    out16 = fp8_gemm_quantized(qa, sa, qb, sb, recipe, "reference")
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert out16.shape == (SHAPE[0], SHAPE[2])
    assert relative_error(out32, ref) < 1e-6
    assert relative_error(out16, ref) < BF16_OUT_TOL


@pytest.mark.parametrize("recipe", RECIPES)
def test_fp8_gemm_vs_unquantised_fp32_is_a_few_percent(recipe: str) -> None:
    a, b = _operands(*SHAPE, seed=2)
    low, high = FP8_VS_FP32_RANGE
    assert low < relative_error(fp8_gemm(a, b, recipe, "reference"), a @ b) < high


def test_blockwise_isolates_an_outlier_k_block() -> None:
    # Both K halves contribute equally to a @ b, but one is 2^16 larger in a (and smaller
    # in b): a per-tensor or per-row scale pushes the other half into e4m3 subnormals.
    a, b = _operands(*SHAPE, seed=3)
    a[:, :128] *= 2.0**16
    b[:128, :] /= 2.0**16
    errors = {r: relative_error(fp8_gemm(a, b, r, "reference"), a @ b) for r in RECIPES}
    assert errors["blockwise"] < FP8_VS_FP32_RANGE[1]
    assert errors["tensorwise"] > 3 * errors["blockwise"]
    assert errors["rowwise"] > 3 * errors["blockwise"]


@pytest.mark.parametrize("device", _scaled_mm_devices())
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_scaled_mm_matches_reference(recipe: str, device: str) -> None:
    a, b = _operands(*SHAPE, seed=4, device=device)
    qa, sa, qb, sb = quantize_operands(a, b, recipe)
    ref = _quantized_reference(qa, sa, qb, sb, recipe)
    row_major_b = fp8_gemm_quantized(qa, sa, qb, sb, recipe, "scaled_mm")
    col_major_b = fp8_gemm_quantized(qa, sa, to_column_major(qb), sb, recipe, "scaled_mm")
    assert row_major_b.dtype == torch.bfloat16
    assert relative_error(row_major_b, ref) < BF16_OUT_TOL
    assert torch.equal(row_major_b, col_major_b)
    assert relative_error(fp8_gemm(a, b, recipe, "scaled_mm"), ref) < BF16_OUT_TOL


def test_scaled_mm_takes_any_m() -> None:
    a, b = _operands(5, 48, 32, seed=5)
    out = fp8_gemm(a, b, "rowwise", "scaled_mm")
    assert out.shape == (5, 32)


def test_to_column_major() -> None:
    b = torch.randn(48, 32)
    col = to_column_major(b)
    assert torch.equal(col, b) and col.stride() == (1, 48)
    assert to_column_major(col) is col


@pytest.mark.parametrize("k, n", [(40, 32), (48, 40), (200, 80)])
def test_scaled_mm_rejects_k_or_n_not_multiple_of_16(k: int, n: int) -> None:
    a, b = _operands(64, k, n, seed=6)
    with pytest.raises(KernelUnsupportedError, match="multiples of 16"):
        fp8_gemm(a, b, "tensorwise", "scaled_mm")
    qa, sa, qb, sb = quantize_operands(a, b, "tensorwise")
    with pytest.raises(KernelUnsupportedError, match="multiples of 16"):
        fp8_gemm_quantized(qa, sa, qb, sb, "tensorwise", "scaled_mm")


def test_reference_takes_shapes_scaled_mm_rejects() -> None:
    a, b = _operands(64, 40, 24, seed=7)
    assert fp8_gemm(a, b, "blockwise", "reference").shape == (64, 24)


def test_scaled_mm_blockwise_on_cpu_is_refused() -> None:
    a, b = _operands(128, 256, 256, seed=8)
    with pytest.raises(KernelUnsupportedError, match="blockwise"):
        fp8_gemm(a, b, "blockwise", "scaled_mm")


def test_scaled_mm_rejects_two_e5m2_operands_and_non_bf16_rowwise_output() -> None:
    a, b = _operands(64, 64, 64, seed=9)
    qa, sa, qb, sb = quantize_operands(a, b, "tensorwise", E5M2)
    with pytest.raises(KernelUnsupportedError, match="e5m2"):
        fp8_gemm_quantized(qa, sa, qb, sb, "tensorwise", "scaled_mm")
    with pytest.raises(KernelUnsupportedError, match="bfloat16 only"):
        fp8_gemm(a, b, "rowwise", "scaled_mm", out_dtype=torch.float32)


def test_unknown_recipe_and_backend_list_allowed_values() -> None:
    a, b = _operands(64, 64, 64, seed=10)
    with pytest.raises(KernelUnsupportedError, match="allowed: tensorwise, rowwise, blockwise"):
        fp8_gemm(a, b, "per-channel")
    with pytest.raises(KernelUnsupportedError, match="allowed: auto, reference, scaled_mm, triton"):
        fp8_gemm(a, b, "rowwise", "cutlass")
    with pytest.raises(KernelUnsupportedError, match="allowed: torch, triton"):
        bf16_gemm(a.bfloat16(), b.bfloat16(), "cublas")
    with pytest.raises(ValueError):
        select_backend("cpu", "mxfp8")


def test_bad_operands_are_rejected() -> None:
    a, b = _operands(64, 64, 32, seed=11)
    with pytest.raises(KernelUnsupportedError, match="inner dimensions"):
        fp8_gemm(a, b.t(), "tensorwise", "reference")
    with pytest.raises(KernelUnsupportedError, match="2-D"):
        fp8_gemm(a[None], b, "tensorwise", "reference")
    with pytest.raises(KernelUnsupportedError, match="out_dtype"):
        fp8_gemm(a, b, "tensorwise", "reference", out_dtype=torch.int32)
    with pytest.raises(ValueError, match="inf or NaN"):
        fp8_gemm(a.index_fill(0, torch.tensor([3]), float("nan")), b, "rowwise", "reference")
    qa, sa, qb, sb = quantize_operands(a, b, "rowwise")
    with pytest.raises(KernelUnsupportedError, match="scale_b must have shape"):
        fp8_gemm_quantized(qa, sa, qb, sb.t(), "rowwise", "reference")
    with pytest.raises(KernelUnsupportedError, match="float8"):
        fp8_gemm_quantized(qa.float(), sa, qb, sb, "rowwise", "reference")


def test_bf16_gemm_torch_backend() -> None:
    a, b = _operands(*SHAPE, seed=12)
    a16, b16 = a.bfloat16(), b.bfloat16()
    out = bf16_gemm(a16, b16)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, a16.float() @ b16.float()) < BF16_OUT_TOL
    with pytest.raises(KernelUnsupportedError, match="bfloat16 operands"):
        bf16_gemm(a, b)


def test_auto_selects_reference_on_cpu() -> None:
    for recipe in RECIPES:
        assert select_backend("cpu", recipe) == "reference"
        assert select_backend(torch.device("cpu"), recipe, "reference") == "reference"


@pytest.mark.parametrize("backend", ["scaled_mm", "triton"])
def test_fp8_backend_on_sm80_is_refused(backend: str) -> None:
    with pytest.raises(KernelUnsupportedError, match="compute capability >= 8.9"):
        select_backend("cuda", "tensorwise", backend, capability=(8, 0))


def test_sm80_auto_and_reference_fall_to_reference() -> None:
    assert select_backend("cuda", "rowwise", "auto", capability=(8, 0)) == "reference"
    assert select_backend("cuda", "rowwise", "reference", capability=(8, 0)) == "reference"


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
def test_auto_prefers_scaled_mm_on_fp8_gpus(capability: tuple[int, int]) -> None:
    assert select_backend("cuda", "tensorwise", capability=capability) == "scaled_mm"
    assert select_backend("cuda", "rowwise", capability=capability) == "scaled_mm"


def test_auto_steps_past_scaled_mm_for_shapes_it_cannot_take() -> None:
    cuda, hopper = torch.device("cuda"), (9, 0)
    args = (E4M3, E4M3, torch.bfloat16)
    assert gemm._resolve_backend(cuda, "rowwise", "auto", hopper, 256, 256, *args) == "scaled_mm"
    fallback = "triton" if triton_installed() else "reference"
    assert gemm._resolve_backend(cuda, "rowwise", "auto", hopper, 40, 256, *args) == fallback
    with pytest.raises(KernelUnsupportedError, match="multiples of 16"):
        gemm._resolve_backend(cuda, "rowwise", "scaled_mm", hopper, 40, 256, *args)


def test_triton_on_cpu_without_interpreter_is_refused() -> None:
    if triton_installed() and interpreter_requested():
        pytest.skip("this pytest process runs with TRITON_INTERPRET=1")
    with pytest.raises(KernelUnsupportedError, match="TRITON_INTERPRET|triton package"):
        select_backend("cpu", "tensorwise", "triton")
