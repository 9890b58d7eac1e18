"""HBM bandwidth kernels: byte accounting (reads + writes) and copy/triad results.

Run: ``pytest tests/kernels/test_kernels_hbm.py`` (about a second on CPU). The Triton
triad is checked in ``test_kernels_triton.py`` (interpreter subprocess).
"""

from __future__ import annotations

import pytest
import torch

from gosok.kernels.errors import KernelUnsupportedError
from gosok.kernels.hbm import device_copy, hbm_bytes, make_buffers, stream_triad


def test_bytes_are_counted_as_reads_plus_writes() -> None:
    assert hbm_bytes("copy", 1 << 30) == 2 << 30
    assert hbm_bytes("triad", 1000) == 3000
    assert hbm_bytes("copy", 0) == 0


def test_bad_kind_and_size_are_rejected() -> None:
    with pytest.raises(KernelUnsupportedError, match="allowed: copy, triad"):
        hbm_bytes("scale", 10)
    with pytest.raises(ValueError, match=">= 0"):
        hbm_bytes("copy", -1)
    with pytest.raises(ValueError, match="multiple of 4"):
        make_buffers("copy", 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_copy(dtype: torch.dtype) -> None:
    dst, src = make_buffers("copy", 4096 * 8, dtype=dtype)
    assert dst.numel() * dst.element_size() == 4096 * 8
    assert device_copy(dst, src) == 2 * 4096 * 8
    assert torch.equal(dst, src)


def test_stream_triad_torch() -> None:
    a, b, c = make_buffers("triad", 40_000)
    assert stream_triad(a, b, c, 3.0) == 3 * 40_000
    assert torch.allclose(a, b + 3.0 * c, rtol=1e-6, atol=1e-6)


def test_mismatched_buffers_and_backend_are_rejected() -> None:
    a, b, c = make_buffers("triad", 4000)
    with pytest.raises(KernelUnsupportedError, match="share shape"):
        stream_triad(a, b, c[:-1], 1.0)
    with pytest.raises(KernelUnsupportedError, match="share shape"):
        device_copy(a.double(), b)
    with pytest.raises(KernelUnsupportedError, match="allowed: torch, triton"):
        stream_triad(a, b, c, 1.0, backend="cuda")
