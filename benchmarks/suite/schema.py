"""Typed schemas of the acceptance suites (``suite=quick|acceptance|audit``) and contracts.

A suite is a list of phases (``inventory``, ``compute``, ``intra_node``, ``inter_node``,
``isolation``) with one settings block per phase. ``configs/suite/<name>.yaml`` merges onto
``SuiteConfig`` (Hydra refuses misspelt keys and wrong types). A contract
(``configs/contract/<name>.yaml``, chosen with ``suite.contract=<name>`` or a path) merges
onto ``ContractConfig``: the expectations per metric as a fraction of the catalogue spec or
an absolute value, per-GPU-type overrides, and the outlier rule against the cluster median.

Use: ``core.schema.register_bench_schemas()`` stores ``SuiteConfig`` for Hydra;
``load_contract("default", "h200")`` returns a typed contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from gosok.launcher.config.catalogue import config_dir
from gosok.launcher.errors import ConfigError

PHASES = ("inventory", "compute", "intra_node", "inter_node", "isolation")
GEMM_DTYPES = ("bf16", "fp8")
METRICS = (
    "gemm_fp8_tflops",
    "gemm_bf16_tflops",
    "hbm_gbps",
    "intra_node_busbw_gbps",
    "inter_node_busbw_gbps",
)


@dataclass
class InventoryPhaseConfig:
    """Per-node facts: expected vs found, error counters, version drift between nodes."""

    check_version_drift: bool = True
    # Version fields that must agree on every node (drift is a WARN).
    drift_keys: list[str] = field(
        default_factory=lambda: ["torch", "cuda", "nccl", "driver", "python", "ray"]
    )


@dataclass
class ComputePhaseConfig:
    """GEMM and memory bandwidth on every GPU at once (every rank, one barrier per repeat)."""

    gemm_dtypes: list[str] = field(default_factory=lambda: list(GEMM_DTYPES))
    gemm_size: int = 8192  # M = N = K
    fp8_recipe: str = "tensorwise"
    fp8_backend: str = "auto"
    hbm: bool = True
    hbm_bytes: int = 1 << 30
    #: Untimed calls before the samples.
    warmup_iters: int = 3
    #: Timed samples per kernel (median reported), the same step as ``bench=gemm``.
    iters: int = 20
    #: A sample lasts at least this long (back-to-back calls); 0: one call per sample.
    min_sample_s: float = 0.0
    #: Flush L2 before each sample (outside the timed span), as ``bench=gemm``.
    flush_l2: bool = True
    #: Bytes zeroed to flush L2 (larger than any GPU's L2).
    flush_bytes: int = 256 << 20
    #: torch threads per rank on the CPU fallback.
    cpu_threads: int = 1
    timeout_s: float = 600.0


@dataclass
class CollectivePhaseConfig:
    """A collective sweep measured on a set of rank groups concurrently."""

    ops: list[str] = field(default_factory=lambda: ["all_reduce"])
    dtype: str = "float32"
    min_bytes: int = 1 << 20
    max_bytes: int = 1 << 30
    step_factor: int = 4
    warmup_iters: int = 5
    iters: int = 20
    repeats: int = 3
    # inter_node only: "all" (every rank of every node) or "inter_node" (local rank 0).
    scope: str = "all"
    # inter_node only: also measure every rail at once (one group per local GPU index, one
    # GPU of every node in each), so a bad NIC shows as one slow rail, not a slow cluster.
    rails: bool = True
    timeout_s: float = 600.0


@dataclass
class IsolationPhaseConfig:
    """Bad-node / bad-link search over inter-node groups measured in parallel."""

    trigger: str = "on_failure"
    group_size: int = 4  # nodes per screening group (>= 4 avoids the two-node Tree case)
    exhaustive_below: int = 6  # fewer nodes than this: every pair, node score = median
    ranks: str = "local0"
    op: str = "all_reduce"
    dtype: str = "float32"
    size_bytes: int = 256 << 20
    warmup_iters: int = 3
    iters: int = 10
    repeats: int = 3
    timeout_s: float = 600.0


@dataclass
class SuiteConfig:
    """One acceptance suite: which phases run, in order, and each phase's settings."""

    name: str = MISSING
    description: str = ""
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    contract: str = "auto"  # auto: cpu_fallback on gpu=cpu, else default; or a name / path
    inventory: InventoryPhaseConfig = field(default_factory=InventoryPhaseConfig)
    compute: ComputePhaseConfig = field(default_factory=ComputePhaseConfig)
    intra_node: CollectivePhaseConfig = field(default_factory=CollectivePhaseConfig)
    inter_node: CollectivePhaseConfig = field(default_factory=CollectivePhaseConfig)
    isolation: IsolationPhaseConfig = field(default_factory=IsolationPhaseConfig)
    # Fixed costs for the dry-run estimate (seconds): cluster start, ranks up, teardown.
    setup_estimate_s: float = 20.0
    # Applied on the CPU fallback (gpu=cpu) only, as dotlist overrides of this suite
    # ("compute.gemm_size=256"): same phases, sizes a small host finishes quickly.
    cpu_overrides: list[str] = field(default_factory=list)


@dataclass
class Expectation:
    """A floor for one metric. FAIL below the floor, WARN within ``warn_margin`` above it."""

    fraction_of_spec: float | None = None
    absolute: float | None = None
    warn_margin: float = 0.05
    source: str = ""


@dataclass
class OutlierRule:
    """SuperBench-style variance rule against the cluster median (higher is better)."""

    warn_below_median: float = 0.05
    fail_below_median: float = 0.10


@dataclass
class ContractConfig:
    """What the provider contracted: floors per metric and the rules applied to them."""

    name: str = "default"
    description: str = ""
    expectations: dict[str, Expectation] = field(default_factory=dict)
    # Per GPU type (catalogue key): metric -> Expectation, replacing the general one.
    gpu_expectations: dict[str, dict[str, Expectation]] = field(default_factory=dict)
    outlier: OutlierRule = field(default_factory=OutlierRule)
    # Per metric: a different outlier rule (e.g. a wider one where a figure is noisy).
    metric_outliers: dict[str, OutlierRule] = field(default_factory=dict)
    isolation_slow_below: float = 0.10  # a group is slow below (1 - this) x reference
    b200_expected_fp8_tflops: float = 3433.0
    b200_expected_source: str = "ml-engineering MAMF, torch._scaled_mm tensorwise, B200"
    max_temperature_c: float = 85.0
    max_ecc_uncorrected: int = 0
    #: A spot check FAILs a claimed figure above the auditor's measurement of the same node
    #: by more than this fraction (``suite=spotcheck``).
    spotcheck_tolerance: float = 0.10


def effective_suite(suite: Any, gpu: str) -> Any:
    """The suite as it runs on ``gpu``: with ``cpu_overrides`` applied on the CPU fallback."""
    if gpu != "cpu" or not suite.cpu_overrides:
        return suite
    try:
        return OmegaConf.merge(suite, OmegaConf.from_dotlist(list(suite.cpu_overrides)))
    except Exception as err:  # omegaconf raises several validation error types
        raise ConfigError([f"suite.cpu_overrides: {err}"]) from err


def contract_path(name: str, gpu: str) -> Path:
    """Where a contract lives: a path as given, or configs/contract/<name>.yaml."""
    if name == "auto":
        name = "cpu_fallback" if gpu == "cpu" else "default"
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = config_dir() / "contract" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (config_dir() / "contract").glob("*.yaml"))
        raise ConfigError(
            [f"suite.contract={name!r}: no such contract; allowed: auto, {', '.join(known)}"]
        )
    return path


def load_contract(name: str, gpu: str) -> ContractConfig:
    """The typed contract a suite run judges against (misspelt keys are refused)."""
    path = contract_path(name, gpu)
    raw = OmegaConf.load(path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ContractConfig), raw)
    except Exception as err:  # omegaconf raises several validation error types
        raise ConfigError([f"contract {path}: {err}"]) from err
    contract: ContractConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    # Nested containers of dataclasses can come back as plain dicts: make them typed.
    contract.gpu_expectations = {
        gpu_key: {m: e if isinstance(e, Expectation) else Expectation(**e) for m, e in per.items()}
        for gpu_key, per in contract.gpu_expectations.items()
    }
    unknown = [m for m in [*contract.expectations, *contract.metric_outliers] if m not in METRICS]
    for per_gpu in contract.gpu_expectations.values():
        unknown += [m for m in per_gpu if m not in METRICS]
    if unknown:
        raise ConfigError(
            [f"contract {path}: unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}"]
        )
    return contract


def validate_suite(suite: Any) -> list[str]:
    """Every setting of every phase, each problem naming its key (see ``phases``)."""
    from gosok.benchmarks.suite.phases import validate_phases

    problems = validate_phases(suite)
    if not list(suite.phases):
        problems.append("suite.phases is empty: a suite with no phase checks nothing")
    return problems


def reference_suite(name: str, gpu: str) -> Any:
    """gosok's own suite ``name`` as it runs on ``gpu`` (None when gosok has no such suite):
    what a file's recorded suite settings are judged against."""
    from omegaconf import OmegaConf

    from gosok.launcher.config.catalogue import config_dir

    path = config_dir() / "suite" / f"{name}.yaml"
    if not name.replace("_", "").isalnum() or not path.is_file():
        return None
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return effective_suite(OmegaConf.merge(OmegaConf.structured(SuiteConfig), raw), gpu)
