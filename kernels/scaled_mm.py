"""The ``scaled_mm`` FP8 GEMM backend: ``torch._scaled_mm`` (cuBLASLt on CUDA).

Use through ``gosok.kernels.gemm``; this module holds the backend's own rules:

* Layout: a row-major [M,K], b column-major [K,N] (``to_column_major(b)``, i.e.
  ``b.t().contiguous().t()``). A row-major b is converted on every call, which costs a
  copy: benchmarks should convert once, outside the timed region.
* Shapes: K and N multiples of 16 (cuBLASLt FP8 rule). The same rule is enforced on
  CPU, where this torch build also runs ``torch._scaled_mm``, so CPU runs reject what a
  GPU run would.
* Scales: tensorwise (one-element fp32 each) and rowwise (a [M,1], b [1,N]) go to
  ``torch._scaled_mm`` as they are. Rowwise and blockwise produce bf16 only.
* Blockwise (1x128 activations, 128x128 weights) needs a torch/cuBLASLt that supports
  it (CUDA 12.9+, Hopper-class GPU). Support is probed once per device with a small
  GEMM checked against the reference; where it fails the backend reports why instead
  of running. The probe path also requires K and N to be multiples of 128.
* Both operands e5m2 is not supported by cuBLASLt and is rejected.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .errors import KernelUnsupportedError
from .quant import BLOCK, E5M2, dequantize_operands, quantize_operands

SCALED_MM_ALIGNMENT = 16


def to_column_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column-major (no copy when it already is)."""
    if t.dim() == 2 and t.stride(0) == 1 and t.stride(1) == max(t.shape[0], 1):
        return t
    return t.t().contiguous().t()


def _blockwise_call(
    qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor
) -> torch.Tensor:
    # cuBLASLt wants the 1x128 scales of a "outer-dim major" (stride (1, M)) and the
    # 128x128 scales of b as seen through b.t() row-major, i.e. b's scales column-major.
    sa_layout = sa.float().t().contiguous().t()
    sb_layout = sb.float().t().contiguous().t()
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        return F.scaled_mm(
            qa,
            qb,
            sa_layout,
            F.ScalingType.BlockWise1x128,
            sb_layout,
            F.ScalingType.BlockWise128x128,
            output_dtype=torch.bfloat16,
        )
    return torch._scaled_mm(qa, qb, scale_a=sa_layout, scale_b=sb_layout, out_dtype=torch.bfloat16)


@functools.cache
def _blockwise_probe(device_type: str, device_index: int | None) -> str | None:
    device = torch.device(device_type, device_index)
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(BLOCK, 2 * BLOCK, device=device, generator=generator)
        b = torch.randn(2 * BLOCK, BLOCK, device=device, generator=generator)
        qa, sa, qb, sb = quantize_operands(a, b, "blockwise")
        got = _blockwise_call(qa, sa, to_column_major(qb), sb).float()
    except Exception as exc:  # any failure of the probe means "not supported here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    a32, b32 = dequantize_operands(qa, sa, qb, sb, "blockwise")
    want = a32 @ b32
    rel_err = float((got - want).norm() / want.norm())
    if not rel_err < 1e-2:
        return f"probe GEMM disagreed with the reference (relative error {rel_err:.2e})"
    return None


def scaled_mm_problem(device: torch.device, recipe: str) -> str | None:
    """Why the scaled_mm backend cannot run ``recipe`` on ``device``, or None when it can."""
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if device.type not in ("cpu", "cuda"):
        return f"scaled_mm runs on cuda or cpu, not {device}"
    if recipe != "blockwise":
        return None
    if device.type == "cpu":
        return "torch._scaled_mm on cpu cannot do blockwise scales (only tensorwise and rowwise)"
    failure = _blockwise_probe(device.type, device.index)
    if failure is not None:
        return (
            f"torch {torch.__version__} cannot run blockwise (1x128, 128x128) scaled_mm on "
            f"{device} ({failure}); use backend='triton' or 'reference'"
        )
    return None


def scaled_mm_request_problem(
    recipe: str, k: int, n: int, a_dtype: torch.dtype, b_dtype: torch.dtype, out_dtype: torch.dtype
) -> str | None:
    """Why torch._scaled_mm cannot take these shapes/dtypes, or None when it can."""
    if k % SCALED_MM_ALIGNMENT or n % SCALED_MM_ALIGNMENT:
        return (
            f"scaled_mm needs K and N to be multiples of {SCALED_MM_ALIGNMENT}, got K={k}, N={n}; "
            "use backend='triton' or 'reference' for these shapes"
        )
    if recipe == "blockwise" and (k % BLOCK or n % BLOCK):
        return f"blockwise scaled_mm needs K and N to be multiples of {BLOCK}, got K={k}, N={n}"
    if a_dtype == E5M2 and b_dtype == E5M2:
        return "scaled_mm cannot multiply two e5m2 operands; use e4m3 for one"
    if recipe != "tensorwise" and out_dtype != torch.bfloat16:
        return f"{recipe} scaled_mm produces bfloat16 only, not {out_dtype}"
    return None


def fp8_gemm_scaled_mm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    recipe: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """out[M,N] via torch._scaled_mm; inputs already validated by ``gemm``."""
    qb = to_column_major(qb)
    if recipe == "blockwise":
        try:
            return _blockwise_call(qa, sa, qb, sb)
        except (RuntimeError, ValueError) as exc:
            raise KernelUnsupportedError(
                f"blockwise scaled_mm refused these inputs: {exc}"
            ) from exc
    return torch._scaled_mm(
        qa,
        qb,
        scale_a=sa.float().contiguous(),
        scale_b=sb.float().contiguous(),
        out_dtype=out_dtype,
    )
