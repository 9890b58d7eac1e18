"""Our own Triton BF16 GEMM: bf16 operands, fp32 accumulation, bf16 output.

Use through ``gosok.kernels.gemm.bf16_gemm(a, b, backend="triton")``; imported lazily
for the reason given in ``triton_env`` (interpreter mode is fixed at decoration time).

Interpreter workarounds (``TRITON_INTERPRET=1``, CPU): the interpreter's ``tl.dot``
multiplies bf16 tiles as raw uint16 bit patterns (garbage), so tiles are upcast to
fp32 before the dot there, which is exact; and its fp32->bf16 cast truncates, so the
kernel stores fp32 and torch rounds to bf16. On GPU the bf16 tiles go to the tensor
cores as they are and the kernel stores bf16; ``@triton.autotune`` picks among a few
tile configurations per (M, N, K).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .env import interpreter_requested
from .tiles import gemm_grid, tile_coordinates

INTERPRETED: bool = interpreter_requested()


def _configs() -> list[triton.Config]:
    if INTERPRETED:
        tiles = [(64, 64, 64, 4, 1)]
    else:
        tiles = [
            (128, 256, 64, 8, 3),
            (256, 128, 64, 8, 3),
            (128, 128, 64, 8, 4),
            (128, 128, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 64, 32, 4, 4),
        ]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
            num_warps=warps,
            num_stages=stages,
        )
        for bm, bn, bk, warps, stages in tiles
    ]


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def _bf16_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    UPCAST_TILES: tl.constexpr,
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
        if UPCAST_TILES:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


def bf16_gemm_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bf16 out[M,N] = a[M,K] @ b[K,N]; inputs already validated by ``gemm``."""
    m, k = a.shape
    n = b.shape[1]
    store_dtype = torch.float32 if INTERPRETED else torch.bfloat16
    out = torch.empty((m, n), device=a.device, dtype=store_dtype)

    _bf16_gemm_kernel[gemm_grid(m, n)](
        a,
        b,
        out,
        m,
        n,
        k,
        *a.stride(),
        *b.stride(),
        *out.stride(),
        UPCAST_TILES=INTERPRETED,
    )
    return out.to(torch.bfloat16)
