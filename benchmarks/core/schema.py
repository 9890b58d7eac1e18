"""Top-level schema of ``gosok bench``: a cluster, a benchmark or a suite, the outputs,
and the audit trail (signing key, auditor's nonce).

Use: ``register_bench_schemas()`` before Hydra composes ``configs/bench.yaml``;
``launcher.config.trust.validate_trust(cfg)`` checks ``sign.key`` and ``audit.nonce``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from gosok.launcher.config.ledger_schema import LedgerConfig
from gosok.launcher.config.schema import ClusterConfig
from gosok.launcher.config.trust import AuditConfig, SignConfig


@dataclass
class OutputConfig:
    """What a run writes besides its results file."""

    #: Also write PNG plots.
    plot: bool = True
    #: File name of the sealed results in the run directory.
    results_name: str = "results.json"


@dataclass
class SpotcheckConfig:
    """The auditor's spot check (``suite=spotcheck``): which claims, how many nodes."""

    #: A provider's suite results.json whose figures the auditor checks by measuring.
    claims: str | None = None
    #: How many of the claimed nodes to measure, drawn with a generator seeded by
    #: ``audit.nonce`` (so the provider cannot know which in advance).
    nodes: int = 2


@dataclass
class BenchRunConfig:
    """Top-level config of ``gosok bench``."""

    cluster: ClusterConfig = MISSING
    bench: Any = MISSING
    #: An acceptance suite (suite=quick|acceptance|audit) runs instead of ``bench``.
    suite: Any = None
    output: OutputConfig = field(default_factory=OutputConfig)
    #: Sign the results file (``sign.key=PATH``).
    sign: SignConfig = field(default_factory=SignConfig)
    #: Audit facts recorded in the results file (``audit.nonce=STRING``).
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: The claims and sample size of ``suite=spotcheck``.
    spotcheck: SpotcheckConfig = field(default_factory=SpotcheckConfig)
    #: The goodput ledger this run is recorded in.
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    seed: int = 1234
    #: Print the plan and exit; nothing is started.
    dry_run: bool = False
    #: Seconds a collective may block before the run is stopped.
    collective_timeout_s: float = 300.0


def register_bench_schemas() -> None:
    """Store the bench schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from gosok.benchmarks.collectives.schema import CollectivesBenchConfig
    from gosok.benchmarks.compute.schema import GemmBenchConfig
    from gosok.benchmarks.suite.schema import SuiteConfig

    cs = ConfigStore.instance()
    cs.store(name="base_bench_run", node=BenchRunConfig)
    cs.store(group="schema/bench", name="base_collectives", node=CollectivesBenchConfig)
    cs.store(group="schema/bench", name="base_gemm", node=GemmBenchConfig)
    cs.store(group="schema/suite", name="base_suite", node=SuiteConfig)
