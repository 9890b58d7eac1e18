"""Typed schema of ``bench=gemm``: the compute (GEMM) and HBM bandwidth benchmark.

``configs/bench/gemm.yaml`` merges onto ``GemmBenchConfig`` (Hydra refuses misspelt keys
and wrong types); the semantic rules live in ``compute_validate``. Shapes, iteration
counts and buffer sizes come from a *profile*: ``cpu`` (small, for the CPU fallback) or
``gpu`` (4096³, 8192³ and Llama-3-70B layer shapes); ``profile: auto`` picks ``cpu`` when
``cluster.gpu=cpu``. A top-level ``warmup_iters`` / ``iters`` / ``hbm_bytes`` /
``flush_bytes`` set to a number overrides the profile's value.

Use: importing this module registers ``base_gemm`` in Hydra's ConfigStore;
``resolved_profile(bench, gpu_key)`` gives the profile a run will use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILES = ("auto", "cpu", "gpu")
DEFAULT_ENTRIES = (
    "gemm_bf16",
    "gemm_fp8_tensorwise",
    "gemm_fp8_rowwise",
    "gemm_fp8_blockwise",
    "hbm_copy",
    "hbm_triad",
)
LLAMA3_70B_LAYERS = (
    "llama3_70b.qkv",
    "llama3_70b.o_proj",
    "llama3_70b.mlp_up",
    "llama3_70b.mlp_down",
)
MINI_LAYERS = (
    "llama3_70b_mini.qkv",
    "llama3_70b_mini.o_proj",
    "llama3_70b_mini.mlp_up",
    "llama3_70b_mini.mlp_down",
)


@dataclass
class ComputeProfile:
    """Shapes and counts for one kind of device."""

    squares: list[int] = field(default_factory=list)  # M = N = K
    transformer: list[str] = field(default_factory=list)  # "<model>.<layer>", M = tokens
    tokens: list[int] = field(default_factory=list)
    warmup_iters: int = 3
    iters: int = 20
    hbm_bytes: int = 1 << 30  # size of each HBM buffer
    flush_bytes: int = 256 << 20  # L2 flush buffer written between iterations


def cpu_profile() -> ComputeProfile:
    return ComputeProfile(
        squares=[256, 512],
        transformer=list(MINI_LAYERS),
        tokens=[256],
        warmup_iters=1,
        iters=5,
        hbm_bytes=8 << 20,
        flush_bytes=4 << 20,
    )


def gpu_profile() -> ComputeProfile:
    return ComputeProfile(
        squares=[4096, 8192],
        transformer=list(LLAMA3_70B_LAYERS),
        tokens=[4096, 16384],
        warmup_iters=5,
        iters=50,
        hbm_bytes=1 << 30,
        flush_bytes=256 << 20,
    )


@dataclass
class GemmBenchConfig:
    """GEMM TFLOPS and HBM bandwidth on every GPU of the allocation at once."""

    name: str = "gemm"
    entries: list[str] = field(default_factory=lambda: list(DEFAULT_ENTRIES))
    # Backends per dtype family: bf16 (torch, triton), fp8 (auto, reference, scaled_mm,
    # triton), hbm (torch, triton; copy has torch only). Every listed backend is measured.
    backends: dict[str, list[str]] = field(
        default_factory=lambda: {"bf16": ["torch"], "fp8": ["auto"], "hbm": ["torch"]}
    )
    profile: str = "auto"
    cpu: ComputeProfile = field(default_factory=cpu_profile)
    gpu: ComputeProfile = field(default_factory=gpu_profile)
    warmup_iters: int | None = None
    iters: int | None = None
    hbm_bytes: int | None = None
    flush_bytes: int | None = None
    flush_l2: bool = True
    cpu_threads: int = 1  # torch threads per rank on the CPU fallback
    min_pct_of_peak: float = 0.0  # fail a measurement below this % of the catalogue peak
    max_table_ranks: int = 16  # above this many ranks the table shows a row per shape, not GPU
    timeout_s: float = 600.0


def profile_name(bench: Any, gpu_key: str) -> str:
    """``cpu`` or ``gpu``: the profile ``bench.profile`` resolves to on ``gpu_key``."""
    if bench.profile != "auto":
        return bench.profile
    return "cpu" if gpu_key == "cpu" else "gpu"


def resolved_profile(bench: Any, gpu_key: str) -> ComputeProfile:
    """The profile a run uses, with the top-level overrides applied."""
    name = profile_name(bench, gpu_key)
    chosen = getattr(bench, name)
    profile = ComputeProfile(
        squares=list(chosen.squares),
        transformer=list(chosen.transformer),
        tokens=list(chosen.tokens),
        warmup_iters=chosen.warmup_iters,
        iters=chosen.iters,
        hbm_bytes=chosen.hbm_bytes,
        flush_bytes=chosen.flush_bytes,
    )
    for key in ("warmup_iters", "iters", "hbm_bytes", "flush_bytes"):
        value = getattr(bench, key)
        if value is not None:
            setattr(profile, key, value)
    return profile
