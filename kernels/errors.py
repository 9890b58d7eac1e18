"""The one exception type the kernels raise for requests they cannot honour.

Use: ``from gosok.kernels.errors import KernelUnsupportedError`` and catch it around
``fp8_gemm`` / ``bf16_gemm`` / HBM kernels. It subclasses ``ValueError`` so callers
that validate configuration with ``except ValueError`` keep working. It is raised
*before* any work starts: an unknown recipe or backend name, a GPU too old for FP8,
shapes a backend cannot take, Triton missing. The kernels never fall back silently
to a different computation when an explicit backend was asked for.
"""

from __future__ import annotations


class KernelUnsupportedError(ValueError):
    """A kernel request that cannot run as asked (the message says why and what is allowed)."""
