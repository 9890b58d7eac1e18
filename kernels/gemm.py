"""The GEMM interface: FP8 GEMM under three scaling recipes and three backends, and BF16 GEMM.

Use::

    from gosok.kernels.gemm import fp8_gemm, fp8_gemm_quantized, bf16_gemm, select_backend
    out = fp8_gemm(a, b, "blockwise")             # a [M,K], b [K,N] high precision -> bf16 [M,N]
    backend = select_backend(a.device, "rowwise")  # what "auto" resolves to here
    qa, sa, qb, sb = quantize_operands(a, b, "rowwise")        # from gosok.kernels.quant
    out = fp8_gemm_quantized(qa, sa, qb, sb, "rowwise", backend)  # what benchmarks time

Recipes are described in ``quant`` (scales are dequantisation scales, x ≈ q * scale).
Backends:

* ``reference``: dequantise to fp32, fp32 ``torch.matmul``, cast to out_dtype. The
  correctness oracle and the CPU fallback; runs anywhere. On CUDA it follows torch's
  global TF32 switch (off by default).
* ``scaled_mm``: ``torch._scaled_mm`` / cuBLASLt; rules in ``scaled_mm``.
* ``triton``: our kernels in ``triton_fp8_gemm`` (e4m3 operands only); on CPU only
  under the Triton interpreter (``TRITON_INTERPRET=1``, see ``triton_env``).

``select_backend(device, recipe, "auto")``: CPU (or any non-CUDA device) -> reference;
CUDA with compute capability >= 8.9 -> scaled_mm, or triton when scaled_mm cannot do
the recipe, or reference when neither can; CUDA below 8.9 (no FP8 tensor cores) ->
reference. ``fp8_gemm``/``fp8_gemm_quantized`` with "auto" also step on (scaled_mm ->
triton -> reference) when the chosen backend cannot take the shapes or dtypes (e.g. K
not a multiple of 16). An *explicit* backend is never swapped for another: when it
cannot do the request, ``KernelUnsupportedError`` says why (GPU older than sm_89,
shapes outside the backend's rules, Triton missing, unknown recipe/backend names with
the allowed ones). ``capability`` arguments override the detected CUDA compute
capability (for tests and dry runs on machines without the GPU).
"""

from __future__ import annotations

import torch

from .errors import KernelUnsupportedError
from .quant import E4M3, E5M2, check_recipe, dequantize_operands, quantize_operands, scale_shapes
from .scaled_mm import (
    fp8_gemm_scaled_mm,
    scaled_mm_problem,
    scaled_mm_request_problem,
    to_column_major,
)
from .triton.env import triton_problem

FP8_BACKENDS: tuple[str, ...] = ("reference", "scaled_mm", "triton")
AUTO_PREFERENCE: tuple[str, ...] = ("scaled_mm", "triton", "reference")
BF16_BACKENDS: tuple[str, ...] = ("torch", "triton")
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
MIN_FP8_CAPABILITY = (8, 9)
MIN_BF16_CAPABILITY = (8, 0)

Capability = tuple[int, int]


def _cuda_capability(device: torch.device, capability: Capability | None) -> Capability | None:
    if device.type != "cuda":
        return None
    if capability is not None:
        return tuple(capability)
    if not torch.cuda.is_available():
        raise KernelUnsupportedError(f"{device} requested but torch sees no CUDA device")
    return torch.cuda.get_device_capability(device)


def _fast_backend_problem(backend: str, device: torch.device, recipe: str) -> str | None:
    if backend == "scaled_mm":
        return scaled_mm_problem(device, recipe)
    return triton_problem(device)


def select_backend(
    device: torch.device | str,
    recipe: str,
    requested: str = "auto",
    *,
    capability: Capability | None = None,
) -> str:
    """The FP8 backend that will run ``recipe`` on ``device``: one of FP8_BACKENDS."""
    check_recipe(recipe)
    if requested != "auto" and requested not in FP8_BACKENDS:
        allowed = ", ".join(("auto", *FP8_BACKENDS))
        raise KernelUnsupportedError(f"unknown FP8 GEMM backend {requested!r}; allowed: {allowed}")
    device = torch.device(device)
    if requested == "reference":
        return "reference"
    cap = _cuda_capability(device, capability)
    if requested == "auto":
        if cap is None or cap < MIN_FP8_CAPABILITY:
            return "reference"
        for backend in AUTO_PREFERENCE[:-1]:
            if _fast_backend_problem(backend, device, recipe) is None:
                return backend
        return "reference"
    if cap is not None and cap < MIN_FP8_CAPABILITY:
        raise KernelUnsupportedError(
            f"FP8 backend {requested!r} needs compute capability >= "
            f"{MIN_FP8_CAPABILITY[0]}.{MIN_FP8_CAPABILITY[1]} (Ada, Hopper, Blackwell); "
            f"{device} is sm_{cap[0]}{cap[1]}; use backend='reference'"
        )
    problem = _fast_backend_problem(requested, device, recipe)
    if problem is not None:
        raise KernelUnsupportedError(problem)
    return requested


def _check_operand_shapes(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, int]:
    if a.dim() != 2 or b.dim() != 2:
        raise KernelUnsupportedError(
            f"GEMM operands must be 2-D, got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[0]:
        raise KernelUnsupportedError(
            f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)} "
            "(want [M,K] @ [K,N])"
        )
    if a.device != b.device:
        raise KernelUnsupportedError(f"operands on different devices: {a.device} and {b.device}")
    m, k = a.shape
    return m, k, b.shape[1]


def _request_problem(
    backend: str,
    recipe: str,
    k: int,
    n: int,
    a_dtype: torch.dtype,
    b_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> str | None:
    if backend == "scaled_mm":
        return scaled_mm_request_problem(recipe, k, n, a_dtype, b_dtype, out_dtype)
    if backend == "triton" and (a_dtype != E4M3 or b_dtype != E4M3):
        return f"the triton FP8 kernel takes float8_e4m3fn operands, got {a_dtype} and {b_dtype}"
    return None


def _resolve_backend(
    device: torch.device,
    recipe: str,
    requested: str,
    capability: Capability | None,
    k: int,
    n: int,
    a_dtype: torch.dtype,
    b_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> str:
    """select_backend, then the shape/dtype rules; "auto" steps on to the next backend."""
    if out_dtype not in OUT_DTYPES:
        allowed = ", ".join(str(d) for d in OUT_DTYPES)
        raise KernelUnsupportedError(f"unsupported out_dtype {out_dtype}; allowed: {allowed}")
    chosen = select_backend(device, recipe, requested, capability=capability)
    problem = _request_problem(chosen, recipe, k, n, a_dtype, b_dtype, out_dtype)
    if problem is None:
        return chosen
    if requested != "auto":
        raise KernelUnsupportedError(problem)
    for backend in AUTO_PREFERENCE[AUTO_PREFERENCE.index(chosen) + 1 :]:
        usable = backend == "reference" or _fast_backend_problem(backend, device, recipe) is None
        if usable and _request_problem(backend, recipe, k, n, a_dtype, b_dtype, out_dtype) is None:
            return backend
    return "reference"


def _check_quantized_inputs(
    qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor, recipe: str
) -> tuple[int, int, int]:
    m, k, n = _check_operand_shapes(qa, qb)
    for name, q in (("qa", qa), ("qb", qb)):
        if q.dtype not in (E4M3, E5M2):
            raise KernelUnsupportedError(
                f"{name} must be float8_e4m3fn or float8_e5m2, got {q.dtype}"
            )
    want_sa, want_sb = scale_shapes(recipe, m, k, n)
    for name, scale, want in (("scale_a", sa, want_sa), ("scale_b", sb, want_sb)):
        shape_ok = scale.numel() == 1 if recipe == "tensorwise" else tuple(scale.shape) == want
        if not shape_ok:
            raise KernelUnsupportedError(
                f"{recipe} {name} must have shape {want}, got {tuple(scale.shape)}"
            )
        if not scale.is_floating_point() or scale.device != qa.device:
            raise KernelUnsupportedError(
                f"{name} must be a float tensor on {qa.device}, got {scale.dtype} on {scale.device}"
            )
    return m, k, n


def _reference_fp8_gemm(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    recipe: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    a32, b32 = dequantize_operands(qa, sa, qb, sb, recipe)
    return torch.matmul(a32, b32).to(out_dtype)


def fp8_gemm_quantized(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qb: torch.Tensor,
    sb: torch.Tensor,
    recipe: str,
    backend: str = "auto",
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    capability: Capability | None = None,
) -> torch.Tensor:
    """out[M,N] = (qa * sa) @ (qb * sb) from already-quantised operands (qb is [K,N])."""
    _, k, n = _check_quantized_inputs(qa, sa, qb, sb, recipe)
    chosen = _resolve_backend(
        qa.device, recipe, backend, capability, k, n, qa.dtype, qb.dtype, out_dtype
    )
    if chosen == "reference":
        return _reference_fp8_gemm(qa, sa, qb, sb, recipe, out_dtype)
    if chosen == "scaled_mm":
        return fp8_gemm_scaled_mm(qa, sa, qb, sb, recipe, out_dtype)
    from .triton.fp8_gemm import fp8_gemm_triton

    return fp8_gemm_triton(qa, sa, qb, sb, recipe, out_dtype)


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    recipe: str,
    backend: str = "auto",
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    capability: Capability | None = None,
) -> torch.Tensor:
    """out[M,N] ≈ a[M,K] @ b[K,N]: quantise both to e4m3 per ``recipe``, then FP8 GEMM."""
    _, k, n = _check_operand_shapes(a, b)
    check_recipe(recipe)
    chosen = _resolve_backend(a.device, recipe, backend, capability, k, n, E4M3, E4M3, out_dtype)
    qa, sa, qb, sb = quantize_operands(a, b, recipe, E4M3)
    if chosen == "scaled_mm":
        qb = to_column_major(qb)
    return fp8_gemm_quantized(qa, sa, qb, sb, recipe, chosen, out_dtype, capability=capability)


def bf16_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    backend: str = "torch",
    *,
    capability: Capability | None = None,
) -> torch.Tensor:
    """bf16 out[M,N] = a[M,K] @ b[K,N] for bf16 operands, via torch.matmul or our Triton kernel."""
    if backend not in BF16_BACKENDS:
        raise KernelUnsupportedError(
            f"unknown BF16 GEMM backend {backend!r}; allowed: {', '.join(BF16_BACKENDS)}"
        )
    _check_operand_shapes(a, b)
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:
        raise KernelUnsupportedError(
            f"bf16_gemm takes bfloat16 operands, got {a.dtype} and {b.dtype}"
        )
    if backend == "torch":
        return torch.matmul(a, b)
    cap = _cuda_capability(a.device, capability)
    if cap is not None and cap < MIN_BF16_CAPABILITY:
        raise KernelUnsupportedError(
            f"the triton BF16 kernel needs compute capability >= 8.0; {a.device} is "
            f"sm_{cap[0]}{cap[1]}; use backend='torch'"
        )
    problem = triton_problem(a.device)
    if problem is not None:
        raise KernelUnsupportedError(problem)
    from .triton.bf16_gemm import bf16_gemm_triton

    return bf16_gemm_triton(a, b)
