"""Our own Triton FP8 GEMM: e4m3 operands, fp32 accumulation, per-recipe scaling.

Use through ``gosok.kernels.gemm.fp8_gemm(..., backend="triton")``; this module is
imported lazily, the first time that backend runs, because ``triton.jit`` fixes
compiled-vs-interpreted mode at decoration time (``TRITON_INTERPRET=1`` must be in the
environment before this import for CPU tensors; see ``triton_env``).

One kernel serves all three recipes (``RECIPE`` is a compile-time constant):

* tensorwise / rowwise: ``tl.dot`` accumulates the whole K loop in fp32 and the
  scales are applied once in the epilogue (scalar, or per-row x per-column).
* blockwise (DeepSeek 1x128 activations, 128x128 weights): each 128-wide K step's
  partial product is promoted to the fp32 accumulator multiplied by that K block's
  row scales of a and column-block scales of b, so BLOCK_K is fixed at 128.

On GPU ``@triton.autotune`` picks among a few tile configurations per (M, N, K); the
first call for a new shape pays for the tuning, so benchmarks must warm up. Under the
interpreter a single small configuration is used, and the kernel stores fp32 which is
cast to the output dtype in torch: the interpreter's fp32->bf16 cast truncates instead
of rounding to nearest even, while the GPU kernel stores bf16 directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .env import interpreter_requested
from .tiles import gemm_grid, tile_coordinates

INTERPRETED: bool = interpreter_requested()
SCALE_BLOCK = 128
RECIPE_IDS: dict[str, int] = {"tensorwise": 0, "rowwise": 1, "blockwise": 2}


def _configs() -> list[triton.Config]:
    if INTERPRETED:
        tiles = [(64, 64, 4, 1)]
    else:
        tiles = [
            (128, 256, 8, 3),
            (256, 128, 8, 3),
            (128, 128, 8, 4),
            (128, 128, 4, 4),
            (64, 128, 4, 4),
            (128, 64, 4, 4),
        ]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": SCALE_BLOCK, "GROUP_M": 8},
            num_warps=warps,
            num_stages=stages,
        )
        for bm, bn, warps, stages in tiles
    ]


@triton.autotune(configs=_configs(), key=["M", "N", "K", "RECIPE"])
@triton.jit
def _fp8_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    sa_ptr,
    sb_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    stride_sa0,
    stride_sa1,
    stride_sb0,
    stride_sb1,
    RECIPE: tl.constexpr,
    SCALE_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_coordinates(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in = offs_m < M
    n_in = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k_in = offs_k < K - kb * BLOCK_K
        a = tl.load(a_ptrs, mask=m_in[:, None] & k_in[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_in[:, None] & n_in[None, :], other=0.0)
        if RECIPE == 2:
            tl.static_assert(BLOCK_K == SCALE_K)
            row_scale = tl.load(
                sa_ptr + offs_m * stride_sa0 + kb * stride_sa1, mask=m_in, other=0.0
            )
            col_scale = tl.load(
                sb_ptr + kb * stride_sb0 + (offs_n // SCALE_K) * stride_sb1, mask=n_in, other=0.0
            )
            acc += tl.dot(a, b) * row_scale[:, None] * col_scale[None, :]
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if RECIPE == 0:
        acc = acc * (tl.load(sa_ptr) * tl.load(sb_ptr))
    if RECIPE == 1:
        row_scale = tl.load(sa_ptr + offs_m * stride_sa0, mask=m_in, other=0.0)
        col_scale = tl.load(sb_ptr + offs_n * stride_sb1, mask=n_in, other=0.0)
        acc = acc * row_scale[:, None] * col_scale[None, :]

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


def _strides_2d(t: torch.Tensor) -> tuple[int, int]:
    return (t.stride(0), t.stride(1)) if t.dim() == 2 else (0, 0)


def fp8_gemm_triton(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    recipe: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """out[M,N] = dequant(qa) @ dequant(qb); inputs already validated by ``gemm``."""
    m, k = qa.shape
    n = qb.shape[1]
    store_dtype = torch.float32 if INTERPRETED else out_dtype
    out = torch.empty((m, n), device=qa.device, dtype=store_dtype)
    sa32 = sa.to(torch.float32)
    sb32 = sb.to(torch.float32)

    _fp8_gemm_kernel[gemm_grid(m, n)](
        qa,
        qb,
        out,
        sa32,
        sb32,
        m,
        n,
        k,
        *qa.stride(),
        *qb.stride(),
        *out.stride(),
        *_strides_2d(sa32),
        *_strides_2d(sb32),
        RECIPE=RECIPE_IDS[recipe],
        SCALE_K=SCALE_BLOCK,
    )
    return out if out.dtype == out_dtype else out.to(out_dtype)
