"""The structure gosok promises: one-way dependencies, small folders, typed records, one
GEMM method shared by ``bench=gemm`` and the suite, suite settings refused up front."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from gosok.benchmarks.compute.entries import spec_of
from gosok.benchmarks.compute.step import LocalContext, compute_step
from gosok.benchmarks.core.registry import Registry, benchmarks
from gosok.benchmarks.core.timing import GEMM_METHOD
from gosok.benchmarks.suite.phases import PHASES, PhaseContext, compute_kernels
from gosok.benchmarks.suite.schema import SuiteConfig, validate_suite

REPO = Path(__file__).resolve().parents[3]
IMPORT = re.compile(r"^\s*(from|import)\s+gosok\.(\w+)", re.M)


def _imports(top: str) -> set[str]:
    found = set()
    for path in (REPO / top).rglob("*.py"):
        found |= {m.group(2) for m in IMPORT.finditer(path.read_text())}
    return found


def test_dependencies_run_one_way():
    assert "benchmarks" not in _imports("launcher")
    assert _imports("kernels") <= {"kernels"}


def test_no_folder_holds_more_than_twelve_modules():
    for top in ("launcher", "benchmarks", "kernels"):
        for folder in [REPO / top, *(p for p in (REPO / top).rglob("*") if p.is_dir())]:
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, f"{folder} holds {len(modules)} modules"


def test_registries_refuse_duplicates_and_name_the_known():
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    try:
        registry.add("a", 2)
    except ValueError as err:
        assert "registered twice" in str(err)
    else:
        raise AssertionError("duplicate accepted")
    try:
        registry["b"]
    except KeyError as err:
        assert "registered: a" in str(err)


def test_benchmarks_are_typed_records_from_entry_points():
    found = benchmarks()
    assert {"collectives", "gemm", "suite"} <= set(found.names())
    for _, record in found.items():
        assert callable(record.validate) and callable(record.plan) and callable(record.run)
        assert callable(record.render)


class _OneProcessGroup:
    """Stands in for a WorkerGroup: runs the rank function once per fake rank, in-process."""

    def __init__(self, ranks: int) -> None:
        self.contexts = [LocalContext(rank=r, local_rank=r) for r in range(ranks)]

    def run(self, fn, *args, timeout_s=None):
        return [fn(ctx, *args) for ctx in self.contexts]


def test_suite_compute_phase_is_bench_gemm_step_and_method():
    suite = OmegaConf.structured(SuiteConfig(name="t"))
    suite.compute.gemm_size = 32
    suite.compute.hbm_bytes = 1 << 16
    suite.compute.iters = 2
    suite.compute.warmup_iters = 0
    suite.compute.flush_bytes = 1 << 16
    out = PHASES["compute"].run(PhaseContext(_OneProcessGroup(2), None), suite.compute)
    assert len(out["ranks"]) == 2
    for row in out["ranks"]:
        for figure in ("bf16", "fp8"):
            step = row["gemm"][figure]["step"]
            assert step["timing"]["method"] == GEMM_METHOD
            assert row["gemm"][figure]["tflops"] == step["tflops"]
        assert row["hbm"]["step"]["timing"]["method"] == GEMM_METHOD
    # bench=gemm's own record for the same kernel and shape carries the same method.
    _, kernel, backend, shape = compute_kernels(suite.compute)[0]
    direct = compute_step(LocalContext(), kernel, backend, asdict(shape), 0, 2, True, 1 << 16)
    assert direct["timing"]["method"] == GEMM_METHOD
    assert spec_of(kernel).kind == "gemm"


def test_every_suite_phase_setting_is_validated():
    suite = OmegaConf.structured(SuiteConfig(name="t"))
    suite.intra_node.ops = ["bogus"]
    suite.inter_node.dtype = "int8"
    suite.compute.fp8_recipe = "diagonal"
    suite.compute.fp8_backend = "cublas"
    suite.isolation.op = "gossip"
    suite.intra_node.step_factor = 1
    problems = "\n".join(validate_suite(suite))
    for needle in (
        "suite.intra_node.ops",
        "bogus",
        "suite.inter_node.dtype='int8'",
        "suite.compute.fp8_recipe='diagonal'",
        "suite.compute.fp8_backend='cublas'",
        "suite.isolation.op='gossip'",
        "suite.intra_node.step_factor=1",
    ):
        assert needle in problems
    suite = OmegaConf.structured(SuiteConfig(name="t"))
    suite.phases = []
    assert any("empty" in p for p in validate_suite(suite))
