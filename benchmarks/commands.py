"""The benchmarks' ``gosok`` sub-commands as ``Command`` records (entry points in
``pyproject.toml``): ``gosok bench`` and ``gosok report``.

``bench`` composes ``configs/bench.yaml``, finds the ``Benchmark`` record for
``bench.name`` (or ``suite`` when a suite is chosen), runs its ``validate`` with the
cluster's checks before anything starts, prints its ``plan`` on ``dry_run=true``, and
otherwise calls its ``run``.
"""

from __future__ import annotations

from typing import Any

from gosok.launcher.cli import Command, run_hydra


def bench_task(cfg: Any, console: Any) -> int:
    from gosok.benchmarks.core.harness import results_kind
    from gosok.benchmarks.core.registry import benchmarks
    from gosok.launcher.config.ledger_schema import validate_ledger
    from gosok.launcher.config.trust import validate_trust
    from gosok.launcher.config.validate import raise_if, validate_cluster
    from gosok.launcher.errors import ConfigError

    name = results_kind(cfg)
    known = benchmarks()
    if name not in known:
        raise ConfigError([f"bench={name!r} is not a benchmark; allowed: {known.names()}"])
    record = known[name]
    problems = validate_cluster(cfg.cluster)
    problems += validate_trust(cfg)
    problems += validate_ledger(cfg.ledger)
    if not problems:
        problems += record.validate(cfg)
    raise_if(problems)
    if cfg.dry_run:
        for line in record.plan(cfg):
            console.print(line, highlight=False, markup=False)
        return 0
    return _run_recorded(record, cfg, console)


def _run_recorded(record: Any, cfg: Any, console: Any) -> int:
    """Run the benchmark and record it in the goodput ledger, whatever the outcome."""
    import time

    from gosok.launcher.ledger.recorder import record_bench
    from gosok.launcher.results.run_dir import run_dir

    started, status = time.time(), "error"
    try:
        status = record.run(cfg, console)
        return status
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:

        def say(text: str) -> None:
            console.print(text, markup=False, highlight=False)

        record_bench(cfg.ledger, cfg, started, time.time(), status, run_dir=run_dir(), say=say)


def _bench(argv: list[str]) -> int:
    from gosok.benchmarks.core.schema import register_bench_schemas

    return run_hydra("bench", "bench", bench_task, argv, register_bench_schemas)


def _report(argv: list[str]) -> int:
    from gosok.benchmarks.report.command import run_report_command

    return run_report_command(argv)


BENCH = Command(
    "bench", "run a benchmark or suite", "gosok bench cluster=local bench=collectives", _bench
)
REPORT = Command(
    "report",
    "render / verify / sign / compare / audit",
    "gosok report [verify|sign|compare|audit] results.json",
    _report,
)
