"""Semantic checks of a composed ``bench=gemm`` config, run before anything starts.

Hydra already refuses unknown keys and wrong types (``GemmBenchConfig``); this checks
names from closed sets, ranges and the shape rules, and every problem names its full key
and, for closed sets, the allowed values (the style of ``launcher.validate``).

Use: ``raise_if(validate_gemm(cfg.bench, cfg.cluster.gpu))`` (``raise_if`` from
``gosok.launcher.config.validate``).
"""

from __future__ import annotations

from typing import Any

from gosok.benchmarks.compute.entries import KERNELS, spec_of, transformer_shape_names
from gosok.benchmarks.compute.schema import PROFILES, profile_name
from gosok.launcher.config.validate import each_of, one_of, positive

BACKEND_FAMILIES = ("bf16", "fp8", "hbm")
MAX_CPU_SQUARE = 4096  # larger squares take minutes per iteration on a few CPU cores


def _backend_choices() -> dict[str, list[str]]:
    choices: dict[str, list[str]] = {f: [] for f in BACKEND_FAMILIES}
    for name in KERNELS.names():
        spec = spec_of(name)
        for backend in spec.backends:
            if backend not in choices[spec.backend_family]:
                choices[spec.backend_family].append(backend)
    return choices


def _validate_profile(profile: Any, key: str, wants_gemm: bool) -> list[str]:
    problems: list[str] = []
    for size in profile.squares:
        if size < 16 or size % 16:
            problems.append(
                f"{key}.squares has {size}; sizes must be multiples of 16 and >= 16 "
                "(the FP8 kernels' alignment rule)"
            )
    if profile.transformer:
        problems += each_of(f"{key}.transformer", profile.transformer, transformer_shape_names())
        if not profile.tokens:
            problems.append(f"{key}.tokens is empty but {key}.transformer lists shapes")
    for tokens in profile.tokens:
        if tokens < 16 or tokens % 16:
            problems.append(f"{key}.tokens has {tokens}; token counts must be multiples of 16")
    if wants_gemm and not profile.squares and not profile.transformer:
        problems.append(f"{key} measures no GEMM shape: set {key}.squares or {key}.transformer")
    problems += positive(f"{key}.warmup_iters", profile.warmup_iters, 0)
    problems += positive(f"{key}.iters", profile.iters)
    problems += positive(f"{key}.hbm_bytes", profile.hbm_bytes, 4)
    if profile.hbm_bytes % 4:
        problems.append(f"{key}.hbm_bytes={profile.hbm_bytes} must be a multiple of 4 (float32)")
    problems += positive(f"{key}.flush_bytes", profile.flush_bytes)
    return problems


def validate_gemm(bench: Any, gpu_key: str = "cpu", prefix: str = "bench") -> list[str]:
    """Problems with ``bench`` (a GemmBenchConfig) on a cluster of ``gpu_key``; [] if none."""
    problems: list[str] = []
    entries = sorted(KERNELS.names())
    problems += each_of(f"{prefix}.entries", bench.entries, entries)
    problems += one_of(f"{prefix}.profile", bench.profile, PROFILES)
    choices = _backend_choices()
    for family_name in bench.backends:
        if family_name not in choices:
            problems.append(
                f"{prefix}.backends has unknown key {family_name!r}; allowed keys: "
                f"{', '.join(BACKEND_FAMILIES)}"
            )
            continue
        problems += each_of(
            f"{prefix}.backends.{family_name}", bench.backends[family_name], choices[family_name]
        )
    known = [e for e in bench.entries if e in entries]
    for entry in known:
        spec = spec_of(entry)
        configured = bench.backends.get(spec.backend_family) or []
        if not [b for b in configured if b in spec.backends]:
            problems.append(
                f"{prefix}.entries has {entry!r} but {prefix}.backends.{spec.backend_family} "
                f"names none of its backends ({', '.join(spec.backends)})"
            )
    for key in ("warmup_iters", "iters", "hbm_bytes", "flush_bytes"):
        value = getattr(bench, key)
        if value is not None:
            problems += positive(f"{prefix}.{key}", value, 0 if key == "warmup_iters" else 1)
    problems += positive(f"{prefix}.cpu_threads", bench.cpu_threads)
    problems += positive(f"{prefix}.max_table_ranks", bench.max_table_ranks)
    problems += positive(f"{prefix}.timeout_s", bench.timeout_s, 1)
    if not 0 <= bench.min_pct_of_peak <= 100:
        problems.append(f"{prefix}.min_pct_of_peak={bench.min_pct_of_peak} must be in 0..100")
    if bench.profile in PROFILES:
        chosen = profile_name(bench, gpu_key)
        profile = getattr(bench, chosen)
        wants_gemm = any(spec_of(e).kind == "gemm" for e in known)
        problems += _validate_profile(profile, f"{prefix}.{chosen}", wants_gemm)
        if gpu_key == "cpu" and any(s > MAX_CPU_SQUARE for s in profile.squares):
            problems.append(
                f"{prefix}.{chosen}.squares has sizes above {MAX_CPU_SQUARE} on the CPU "
                "fallback (minutes per iteration); use smaller squares or profile=cpu"
            )
    return problems
