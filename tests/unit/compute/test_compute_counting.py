"""Pure parts of the compute benchmark: FLOP and byte counting, shapes, % of peak, the
goal ratios, re-derivation from raw times, and config validation (no Ray, no CLI)."""

from __future__ import annotations

import statistics

import pytest
from omegaconf import OmegaConf

from gosok.benchmarks.compute import entries as compute
from gosok.benchmarks.compute.gpu_sweep import goal_ratios
from gosok.benchmarks.compute.report import format_header, rederive_problems
from gosok.benchmarks.compute.schema import GemmBenchConfig, resolved_profile
from gosok.benchmarks.compute.step import LocalContext, compute_step
from gosok.benchmarks.compute.validate import validate_gemm
from gosok.kernels.hbm import hbm_bytes
from gosok.launcher.config.catalogue import gpu_spec


def test_entries_declare_their_counting():
    family = {
        k: [n for n in compute.KERNELS if compute.KERNELS[n].kind == k] for k in ("gemm", "hbm")
    }
    assert set(family["gemm"]) == {
        "gemm_bf16",
        "gemm_fp8_tensorwise",
        "gemm_fp8_rowwise",
        "gemm_fp8_blockwise",
    }
    assert set(family["hbm"]) == {"hbm_copy", "hbm_triad"}
    for name in family["gemm"]:
        spec = compute.spec_of(name)
        assert spec.flops_for(8192, 10240, 8192) == 2 * 8192 * 10240 * 8192
        assert compute.KERNELS[name].flops_for(3, 5, 7) == 210
    assert compute.spec_of("gemm_bf16").tolerance == 1e-2
    assert compute.spec_of("gemm_fp8_rowwise").tolerance == 5e-2
    for name, kind in (("hbm_copy", "copy"), ("hbm_triad", "triad")):
        assert compute.spec_of(name).bytes_for(1 << 20) == hbm_bytes(kind, 1 << 20)
    assert compute.copy_bytes(100) == 200 and compute.triad_bytes(100) == 300


def test_llama3_70b_layer_shapes():
    layers = compute.TRANSFORMER_MODELS["llama3_70b"].layers()
    assert layers == {
        "qkv": (10240, 8192),
        "o_proj": (8192, 8192),
        "mlp_up": (28672, 8192),
        "mlp_down": (8192, 28672),
    }
    mini = compute.TRANSFORMER_MODELS["llama3_70b_mini"].layers()
    assert all(n * 32 == layers[k][0] and kk * 32 == layers[k][1] for k, (n, kk) in mini.items())
    gpu = resolved_profile(OmegaConf.structured(GemmBenchConfig), "h100_sxm")
    shapes = compute.gemm_shapes(gpu)
    names = [s.name for s in shapes]
    assert names[:2] == ["square_4096", "square_8192"]
    assert "llama3_70b.qkv@16384" in names and len(shapes) == 2 + 4 * 2
    qkv = next(s for s in shapes if s.name == "llama3_70b.qkv@4096")
    assert (qkv.m, qkv.n, qkv.k) == (4096, 10240, 8192)


def test_profile_auto_and_overrides():
    bench = OmegaConf.structured(GemmBenchConfig)
    assert resolved_profile(bench, "cpu").squares == [256, 512]
    assert resolved_profile(bench, "b200").iters == 50
    bench.iters = 7
    bench.profile = "cpu"
    assert resolved_profile(bench, "b200").iters == 7
    assert resolved_profile(bench, "b200").squares == [256, 512]


def test_tflops_and_percent_of_peak():
    times = [2000.0, 1000.0, 1500.0, 1200.0]
    flops = compute.gemm_flops(8192, 8192, 8192)
    record = {
        "entry": "gemm_fp8_tensorwise",
        "skipped": None,
        "times_us": times,
        "rel_error": 0.03,
        "rel_error_vs_reference_backend": 1e-3,
        **compute.time_stats(times),
        "tflops": compute.tflops_from(flops, 1350.0),
    }
    assert record["median_us"] == 1350.0 and record["max_us"] == 2000.0
    assert record["tflops"] == pytest.approx(flops / 1350e-6 / 1e12)
    compute.annotate(record, gpu_spec("h100_sxm"), 30.0)
    assert record["peak"] == 1979 and record["peak_is_estimate"] is False
    assert record["pct_of_peak"] == pytest.approx(100 * record["tflops"] / 1979)
    assert record["passed"] is True
    compute.annotate(record, gpu_spec("h100_sxm"), 90.0)
    assert record["passed"] is False and "min_pct_of_peak" in record["problems"][0]
    hbm = {"entry": "hbm_copy", "skipped": None, "rel_error": 0.0, "gbps": 3000.0}
    compute.annotate(hbm, gpu_spec("h200"), 0.0)
    assert hbm["peak"] == 4800.0 and hbm["pct_of_peak"] == pytest.approx(62.5)
    cpu = compute.annotate(dict(record), gpu_spec("cpu"), 0.0)
    assert cpu["peak_is_estimate"] is True
    assert "% of estimated peak" in format_header(True)
    bad = compute.annotate({**record, "rel_error": 0.2}, gpu_spec("h100_sxm"), 0.0)
    assert bad["passed"] is False and "tolerance" in bad["problems"][0]


def test_step_without_ray_and_rederivation():
    ctx = LocalContext()
    shape = {"name": "square_128", "m": 128, "n": 128, "k": 128, "n_bytes": 0}
    record = compute_step(ctx, "gemm_fp8_rowwise", "auto", shape, 1, 4, True, 1 << 16)
    assert record["backend_used"] == "reference" and len(record["times_us"]) == 4
    assert record["median_us"] == statistics.median(record["times_us"])
    assert 1e-3 < record["rel_error"] < 5e-2
    assert record["rel_error_vs_reference_backend"] == 0.0
    record = compute.annotate(record, gpu_spec("cpu"), 0.0)
    assert rederive_problems([record]) == []
    record["tflops"] *= 1.01
    assert "tflops" in rederive_problems([record])[0]
    skipped = compute_step(ctx, "gemm_fp8_blockwise", "scaled_mm", shape, 0, 1, False, 1)
    assert "blockwise" in skipped["skipped"] and "times_us" not in skipped


def _rec(entry, backend, shape, tflops=None, pct=None):
    return {
        "entry": entry,
        "backend_used": backend,
        "skipped": None,
        "tflops": tflops,
        "pct_of_peak": pct,
        "shape": {"name": shape, "m": 8192, "n_bytes": 1 << 30},
    }


def test_goal_ratios():
    records = [
        _rec("gemm_fp8_tensorwise", "scaled_mm", "square_8192", 1500.0, 1500 / 19.79),
        _rec("gemm_fp8_tensorwise", "triton", "square_8192", 1470.0),
        _rec("gemm_fp8_rowwise", "scaled_mm", "square_8192", 1400.0),
        _rec("gemm_fp8_rowwise", "triton", "square_8192", 1260.0),
        _rec("gemm_bf16", "torch", "square_8192", 800.0, 80.9),
        _rec("hbm_copy", "torch", "hbm", None, 84.0),
    ]
    goals = goal_ratios(records)
    assert goals["fp8_scaled_mm_tensorwise_pct_of_peak"]["met"] is True
    triton = goals["triton_over_scaled_mm_fp8"]
    assert triton["value"] == pytest.approx((0.98 * 0.9) ** 0.5) and triton["met"] is False
    assert triton["worst"]["pair"] == "rowwise square_8192"
    assert goals["bf16_pct_of_peak"]["met"] is True
    assert goals["hbm_copy_pct_of_spec"]["met"] is False


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"entries": ["gemm_fp16"]}, ["bench.entries", "gemm_fp16", "gemm_bf16"]),
        ({"backends": {"fp8": ["cublas"]}}, ["bench.backends.fp8", "scaled_mm"]),
        ({"backends": {"int8": ["torch"]}}, ["bench.backends", "int8", "bf16, fp8, hbm"]),
        ({"profile": "tpu"}, ["bench.profile", "auto, cpu, gpu"]),
        ({"cpu": {"squares": [100]}}, ["bench.cpu.squares", "multiples of 16"]),
        (
            {"cpu": {"transformer": ["llama3_70b.attn"]}},
            ["bench.cpu.transformer", "llama3_70b.qkv"],
        ),
        ({"iters": 0}, ["bench.iters=0", ">= 1"]),
        ({"min_pct_of_peak": 120.0}, ["bench.min_pct_of_peak=120.0", "0..100"]),
        ({"cpu": {"squares": [8192]}}, ["bench.cpu.squares", "CPU fallback"]),
    ],
)
def test_validation_names_the_field(overrides, needles):
    bench = OmegaConf.merge(OmegaConf.structured(GemmBenchConfig), overrides)
    problems = "\n".join(validate_gemm(bench, "cpu"))
    for needle in needles:
        assert needle in problems, problems


def test_default_configs_are_valid():
    bench = OmegaConf.structured(GemmBenchConfig)
    assert validate_gemm(bench, "cpu") == [] and validate_gemm(bench, "b300") == []
