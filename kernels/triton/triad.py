"""Our own Triton STREAM triad ``a = b + scalar * c`` (an HBM bandwidth kernel).

Use through ``gosok.kernels.hbm.stream_triad(a, b, c, scalar, backend="triton")``;
imported lazily for the reason given in ``triton_env``. Arithmetic is done in fp32
and stored in the buffers' dtype. Under the interpreter only fp32 buffers are
accepted, because the interpreter's fp32->bf16/fp16 store cast truncates instead of
rounding (checked by ``hbm``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .env import interpreter_requested

INTERPRETED: bool = interpreter_requested()
TRIAD_BLOCK = 4096


@triton.jit
def _triad_kernel(a_ptr, b_ptr, c_ptr, scalar, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    b = tl.load(b_ptr + offs, mask=inside).to(tl.float32)
    c = tl.load(c_ptr + offs, mask=inside).to(tl.float32)
    tl.store(a_ptr + offs, (b + scalar * c).to(a_ptr.dtype.element_ty), mask=inside)


def triad_triton(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float) -> None:
    """a[:] = b + scalar * c over contiguous same-shape buffers (validated by ``hbm``)."""
    n = a.numel()
    grid = (triton.cdiv(n, TRIAD_BLOCK),)
    _triad_kernel[grid](a, b, c, float(scalar), n, BLOCK=TRIAD_BLOCK, num_warps=8)
