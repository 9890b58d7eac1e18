"""FP8 quantisation helpers shared by every GEMM recipe and backend.

Use::

    from gosok.kernels.quant import quantize_operands, dequantize_operands
    qa, sa, qb, sb = quantize_operands(a, b, "rowwise")   # a [M,K], b [K,N]
    a_hat, b_hat = dequantize_operands(qa, sa, qb, sb, "rowwise")

Scale convention
    Every scale stored here is the *dequantisation* scale: ``x ≈ q.float() * scale``
    (broadcast over the block the scale covers). That is what ``torch._scaled_mm``'s
    ``scale_a``/``scale_b`` mean, so scales go to cuBLASLt unchanged. A block with
    absolute maximum ``amax`` gets ``scale = amax / FP8_MAX`` and is quantised as
    ``q = saturating_cast(x / scale)``, so its largest element lands on the format's
    largest finite value (448 for e4m3fn, 57344 for e5m2).

Edge values
    * An all-zero block (amax == 0) gets scale 1.0 and quantises to zeros: no 0/0, no NaN.
      So does a block whose amax / FP8_MAX underflows to 0 in fp32 (amax < ~1e-42).
    * Finite values beyond the format's range saturate to ±FP8_MAX (a plain ``.to()``
      cast is not guaranteed to saturate: on CUDA it can give NaN).
    * inf or NaN anywhere in the input raises ``ValueError``: an infinite amax would make
      every scale infinite and the whole block NaN, which is never what the caller wants.
      The check reads the tensor once (a device sync on GPU); quantisation is not on the
      timed path of the benchmarks.

Recipes (operands of ``out[M,N] = a[M,K] @ b[K,N]``)
    * ``tensorwise``: one scale per tensor, 0-dim.
    * ``rowwise``: a gets one scale per row, shape [M,1]; b one scale per column
      (per output channel), shape [1,N].
    * ``blockwise`` (DeepSeek-V3): a in 1x128 tiles along K, scale [M, ceil(K/128)];
      b in 128x128 blocks, scale [ceil(K/128), ceil(N/128)]. Ragged tail blocks are
      scaled by the amax of the elements that exist.
"""

from __future__ import annotations

import math

import torch

from .errors import KernelUnsupportedError

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_MAX: dict[torch.dtype, float] = {E4M3: 448.0, E5M2: 57344.0}
RECIPES: tuple[str, ...] = ("tensorwise", "rowwise", "blockwise")
BLOCK = 128


def check_recipe(recipe: str) -> None:
    """Raise ``KernelUnsupportedError`` (a ValueError) naming the allowed recipes."""
    if recipe not in RECIPES:
        raise KernelUnsupportedError(
            f"unknown FP8 recipe {recipe!r}; allowed: {', '.join(RECIPES)}"
        )


def _check_fp8_dtype(fp8_dtype: torch.dtype) -> float:
    if fp8_dtype not in FP8_MAX:
        allowed = ", ".join(str(d) for d in FP8_MAX)
        raise ValueError(f"unsupported FP8 dtype {fp8_dtype}; allowed: {allowed}")
    return FP8_MAX[fp8_dtype]


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` is empty, not high-precision float, or holds inf/NaN."""
    if not x.is_floating_point() or x.dtype in FP8_MAX:
        raise ValueError(f"{name} must be a high-precision float tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); nothing to quantise")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} contains inf or NaN; FP8 quantisation needs finite values "
            "(an infinite amax would turn the whole block into NaN)"
        )


def amax_to_scale(amax: torch.Tensor, fp8_dtype: torch.dtype = E4M3) -> torch.Tensor:
    """Dequantisation scale ``amax / FP8_MAX`` in fp32; 1.0 where that is 0 (all-zero block)."""
    fp8_max = _check_fp8_dtype(fp8_dtype)
    scale = amax.float() / fp8_max
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def saturating_cast(x: torch.Tensor, fp8_dtype: torch.dtype = E4M3) -> torch.Tensor:
    """Cast to FP8, clamping finite values to ±FP8_MAX first; inf/NaN raise ``ValueError``."""
    fp8_max = _check_fp8_dtype(fp8_dtype)
    check_finite(x)
    return x.float().clamp(-fp8_max, fp8_max).to(fp8_dtype)


def _check_matrix(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    check_finite(x, name)


def _quantize_with_scale(
    x: torch.Tensor, expanded_scale: torch.Tensor, fp8_dtype: torch.dtype
) -> torch.Tensor:
    fp8_max = FP8_MAX[fp8_dtype]
    return (x.float() / expanded_scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)


def quantize_tensorwise(
    x: torch.Tensor, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: returns (q, scale) with scale 0-dim fp32."""
    _check_fp8_dtype(fp8_dtype)
    check_finite(x)
    scale = amax_to_scale(x.abs().amax(), fp8_dtype)
    return _quantize_with_scale(x, scale, fp8_dtype), scale


def quantize_rowwise_lhs(
    a: torch.Tensor, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left operand a [M,K]: one scale per row, scale shape [M,1]."""
    return _quantize_per_line(a, "a", 1, fp8_dtype)


def quantize_rowwise_rhs(
    b: torch.Tensor, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right operand b [K,N]: one scale per column (output channel), scale shape [1,N]."""
    return _quantize_per_line(b, "b", 0, fp8_dtype)


def _quantize_per_line(
    x: torch.Tensor, name: str, reduce_dim: int, fp8_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_fp8_dtype(fp8_dtype)
    _check_matrix(x, name)
    scale = amax_to_scale(x.abs().amax(dim=reduce_dim, keepdim=True), fp8_dtype)
    return _quantize_with_scale(x, scale, fp8_dtype), scale


def _pad_to_blocks(x: torch.Tensor, block_rows: int, block_cols: int) -> torch.Tensor:
    rows, cols = x.shape
    pad_rows = -rows % block_rows
    pad_cols = -cols % block_cols
    return torch.nn.functional.pad(x.float(), (0, pad_cols, 0, pad_rows))


def expand_block_scale(
    scale: torch.Tensor, block_rows: int, block_cols: int, shape: torch.Size | tuple[int, int]
) -> torch.Tensor:
    """Repeat a per-block scale over its block_rows x block_cols elements, cropped to shape."""
    full = scale.repeat_interleave(block_rows, dim=0).repeat_interleave(block_cols, dim=1)
    return full[: shape[0], : shape[1]]


def quantize_blockwise_lhs(
    a: torch.Tensor, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations a [M,K] in 1x128 tiles along K: scale shape [M, ceil(K/128)]."""
    _check_fp8_dtype(fp8_dtype)
    _check_matrix(a, "a")
    rows, _ = a.shape
    padded = _pad_to_blocks(a, 1, BLOCK)
    amax = padded.abs().reshape(rows, -1, BLOCK).amax(dim=2)
    scale = amax_to_scale(amax, fp8_dtype)
    q = _quantize_with_scale(a, expand_block_scale(scale, 1, BLOCK, a.shape), fp8_dtype)
    return q, scale


def quantize_blockwise_rhs(
    b: torch.Tensor, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights b [K,N] in 128x128 blocks: scale shape [ceil(K/128), ceil(N/128)]."""
    _check_fp8_dtype(fp8_dtype)
    _check_matrix(b, "b")
    padded = _pad_to_blocks(b, BLOCK, BLOCK)
    k_blocks, n_blocks = padded.shape[0] // BLOCK, padded.shape[1] // BLOCK
    amax = padded.abs().reshape(k_blocks, BLOCK, n_blocks, BLOCK).amax(dim=(1, 3))
    scale = amax_to_scale(amax, fp8_dtype)
    q = _quantize_with_scale(b, expand_block_scale(scale, BLOCK, BLOCK, b.shape), fp8_dtype)
    return q, scale


def dequantize_tensorwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale`` for a single (0-dim or one-element) scale."""
    return q.float() * scale.float().reshape(())


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale`` for a [M,1] (lhs) or [1,N] (rhs) scale."""
    return q.float() * scale.float()


def dequantize_blockwise_lhs(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 dequantisation of 1x128-tiled activations (scale [M, ceil(K/128)])."""
    return q.float() * expand_block_scale(scale.float(), 1, BLOCK, q.shape)


def dequantize_blockwise_rhs(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 dequantisation of 128x128-blocked weights (scale [ceil(K/128), ceil(N/128)])."""
    return q.float() * expand_block_scale(scale.float(), BLOCK, BLOCK, q.shape)


def scale_shapes(recipe: str, m: int, k: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Expected (scale_a shape, scale_b shape) for a [m,k] @ b [k,n] under ``recipe``."""
    check_recipe(recipe)
    if recipe == "tensorwise":
        return (), ()
    if recipe == "rowwise":
        return (m, 1), (1, n)
    k_blocks, n_blocks = math.ceil(k / BLOCK), math.ceil(n / BLOCK)
    return (m, k_blocks), (k_blocks, n_blocks)


def quantize_operands(
    a: torch.Tensor, b: torch.Tensor, recipe: str, fp8_dtype: torch.dtype = E4M3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise both GEMM operands per ``recipe``: returns (qa, scale_a, qb, scale_b)."""
    check_recipe(recipe)
    if recipe == "tensorwise":
        qa, sa = quantize_tensorwise(a, fp8_dtype)
        qb, sb = quantize_tensorwise(b, fp8_dtype)
    elif recipe == "rowwise":
        qa, sa = quantize_rowwise_lhs(a, fp8_dtype)
        qb, sb = quantize_rowwise_rhs(b, fp8_dtype)
    else:
        qa, sa = quantize_blockwise_lhs(a, fp8_dtype)
        qb, sb = quantize_blockwise_rhs(b, fp8_dtype)
    return qa, sa, qb, sb


def dequantize_operands(
    qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor, recipe: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (a, b) from quantised operands and their scales under ``recipe``."""
    check_recipe(recipe)
    if recipe == "tensorwise":
        return dequantize_tensorwise(qa, sa), dequantize_tensorwise(qb, sb)
    if recipe == "rowwise":
        return dequantize_rowwise(qa, sa), dequantize_rowwise(qb, sb)
    return dequantize_blockwise_lhs(qa, sa), dequantize_blockwise_rhs(qb, sb)
