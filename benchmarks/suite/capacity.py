"""Delivered capacity in B200-equivalents, nominal and measured (pure functions).

- nominal: the programme's performance basis, dense FP4 per GPU relative to B200's 9 PF
  (B300 13.5 PF -> 1.5, Vera Rubin 35 PF -> 3.89). GPUs without FP4 (H100, H200, A100)
  are counted by dense FP8 relative to B200's 4500 TFLOPS (H200: 0.44), or BF16 when
  they have no FP8 either (A100: 312 / 2250).
- measured: the FP8 GEMM TFLOPS measured on every GPU, summed, divided by what a B200
  is expected to deliver on the same benchmark (contract ``b200_expected_fp8_tflops``,
  default 3433: ml-engineering's MAMF figure for B200 with ``torch._scaled_mm``).

Use: ``capacity(gpu_spec, n_gpus, measured_fp8_tflops_per_gpu, b200_expected_fp8)``.
"""

from __future__ import annotations

from typing import Any

B200_FP4_BASIS_TFLOPS = 9000.0
B200_FP8_DENSE_TFLOPS = 4500.0
B200_BF16_DENSE_TFLOPS = 2250.0


def nominal_per_gpu(gpu: Any) -> tuple[float, str]:
    """B200-equivalents of one GPU of this type, and the basis used."""
    if gpu.fp4_tflops:
        return gpu.fp4_tflops / B200_FP4_BASIS_TFLOPS, (
            f"dense FP4 {gpu.fp4_tflops:g} / B200 {B200_FP4_BASIS_TFLOPS:g} TFLOPS"
        )
    if gpu.fp8_tflops:
        return gpu.fp8_tflops / B200_FP8_DENSE_TFLOPS, (
            f"dense FP8 {gpu.fp8_tflops:g} / B200 {B200_FP8_DENSE_TFLOPS:g} TFLOPS"
        )
    if gpu.bf16_tflops:
        return gpu.bf16_tflops / B200_BF16_DENSE_TFLOPS, (
            f"dense BF16 {gpu.bf16_tflops:g} / B200 {B200_BF16_DENSE_TFLOPS:g} TFLOPS"
        )
    return 0.0, "no compute spec"


def capacity(
    gpu: Any,
    n_gpus: int,
    measured_fp8_tflops: list[float] | None,
    b200_expected_fp8_tflops: float,
) -> dict[str, Any]:
    """Nominal and measured B200-equivalents of an allocation of ``n_gpus`` GPUs."""
    per_gpu, basis = nominal_per_gpu(gpu)
    result: dict[str, Any] = {
        "gpu": gpu.key,
        "gpus": n_gpus,
        "nominal_per_gpu": per_gpu,
        "nominal_b200_eq": per_gpu * n_gpus,
        "nominal_basis": basis,
        "measured_b200_eq": None,
        "measured_basis": None,
        "delivered_fraction": None,
        "estimate_only": getattr(gpu, "status", "shipping") != "shipping",
    }
    if measured_fp8_tflops:
        total = sum(measured_fp8_tflops)
        measured = total / b200_expected_fp8_tflops
        result["measured_fp8_tflops_total"] = total
        result["measured_b200_eq"] = measured
        result["measured_basis"] = (
            f"sum of FP8 GEMM over {len(measured_fp8_tflops)} GPU(s) / "
            f"B200 expected {b200_expected_fp8_tflops:g} TFLOPS"
        )
        if result["nominal_b200_eq"]:
            result["delivered_fraction"] = measured / result["nominal_b200_eq"]
    return result


def programme_total(counts: dict[str, int], catalogue: dict[str, Any]) -> float:
    """B200-equivalents of a mix of GPUs, e.g. {"vera_rubin": 2016, "b300": 7688}."""
    return sum(nominal_per_gpu(catalogue[key])[0] * n for key, n in counts.items())
