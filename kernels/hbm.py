"""HBM bandwidth kernels: device-to-device copy and STREAM triad, with their byte counts.

Use::

    from gosok.kernels.hbm import make_buffers, device_copy, stream_triad, hbm_bytes
    dst, src = make_buffers("copy", 1 << 30, device="cuda")
    moved = device_copy(dst, src)              # bytes moved = hbm_bytes("copy", src.nbytes)
    a, b, c = make_buffers("triad", 1 << 30, device="cuda")
    moved = stream_triad(a, b, c, 3.0)          # a = b + 3.0 * c
    # bandwidth: moved / seconds, timed by the caller (benchmarks/ does the timing)

Bytes are counted the STREAM way, reads plus writes of one buffer of ``n_bytes``:
copy reads src and writes dst (2 x n_bytes); triad reads b and c and writes a
(3 x n_bytes). Write-allocate traffic, which caches can add, is not counted.
The kernels are plain torch (``Tensor.copy_``, ``torch.add(b, c, alpha=s, out=a)``);
``stream_triad(..., backend="triton")`` runs our Triton kernel (``triton_triad``).
"""

from __future__ import annotations

import torch

from .errors import KernelUnsupportedError
from .triton.env import triton_problem

HBM_KINDS: dict[str, int] = {"copy": 2, "triad": 3}
TRIAD_BACKENDS: tuple[str, ...] = ("torch", "triton")


def _check_kind(kind: str) -> int:
    if kind not in HBM_KINDS:
        raise KernelUnsupportedError(
            f"unknown HBM kernel {kind!r}; allowed: {', '.join(HBM_KINDS)}"
        )
    return HBM_KINDS[kind]


def hbm_bytes(kind: str, n_bytes: int) -> int:
    """Bytes read plus written by one ``kind`` pass over buffers of ``n_bytes`` each."""
    buffers_touched = _check_kind(kind)
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    return buffers_touched * n_bytes


def make_buffers(
    kind: str,
    n_bytes: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Buffers of ``n_bytes`` each for ``kind``: (dst, src) for copy, (a, b, c) for triad.

    Sources are random normal so no kernel can shortcut constant data; outputs are empty.
    """
    buffers_touched = _check_kind(kind)
    element_size = torch.empty((), dtype=dtype).element_size()
    if n_bytes <= 0 or n_bytes % element_size:
        raise ValueError(f"n_bytes must be a positive multiple of {element_size}, got {n_bytes}")
    numel = n_bytes // element_size
    out = torch.empty(numel, device=device, dtype=dtype)
    inputs = [torch.randn(numel, device=device, dtype=dtype) for _ in range(buffers_touched - 1)]
    return (out, *inputs)


def _check_buffers(*buffers: torch.Tensor) -> None:
    first = buffers[0]
    for t in buffers:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise KernelUnsupportedError(
                "HBM kernel buffers must share shape, dtype and device, got "
                + ", ".join(f"{tuple(b.shape)} {b.dtype} {b.device}" for b in buffers)
            )
        if not t.is_contiguous():
            raise KernelUnsupportedError("HBM kernel buffers must be contiguous")


def device_copy(dst: torch.Tensor, src: torch.Tensor) -> int:
    """dst[:] = src on the same device; returns bytes moved (2 x src.nbytes)."""
    _check_buffers(dst, src)
    dst.copy_(src)
    return hbm_bytes("copy", src.numel() * src.element_size())


def stream_triad(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float, backend: str = "torch"
) -> int:
    """a[:] = b + scalar * c; returns bytes moved (3 x a.nbytes)."""
    if backend not in TRIAD_BACKENDS:
        raise KernelUnsupportedError(
            f"unknown triad backend {backend!r}; allowed: {', '.join(TRIAD_BACKENDS)}"
        )
    _check_buffers(a, b, c)
    if backend == "torch":
        torch.add(b, c, alpha=scalar, out=a)
    else:
        _triad_with_triton(a, b, c, scalar)
    return hbm_bytes("triad", a.numel() * a.element_size())


def _triad_with_triton(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scalar: float) -> None:
    problem = triton_problem(a.device)
    if problem is not None:
        raise KernelUnsupportedError(problem)
    from .triton import triad as triton_triad

    if triton_triad.INTERPRETED and a.dtype != torch.float32:
        raise KernelUnsupportedError(
            f"the Triton interpreter rounds {a.dtype} stores wrongly; use float32 buffers there"
        )
    triton_triad.triad_triton(a, b, c, scalar)
