"""The launcher's ``gosok`` sub-commands as ``Command`` records (entry points in
``pyproject.toml``). Each imports its implementation only when it runs, so listing the
commands stays fast.
"""

from __future__ import annotations

import sys

from gosok.launcher.cli import Command, run_hydra


def _cluster(argv: list[str]) -> int:
    actions = ("up", "down", "status")
    if not argv or argv[0] not in actions:
        print(f"gosok cluster: action must be one of {', '.join(actions)}", file=sys.stderr)
        return 2
    from gosok.launcher.cluster.command import run_cluster_command

    return run_hydra(
        "cluster", "cluster_command", run_cluster_command, [f"action={argv[0]}", *argv[1:]]
    )


def _launch(argv: list[str]) -> int:
    from gosok.launcher.config.launch_schema import register_launch_schemas
    from gosok.launcher.launch.command import launch_task

    return run_hydra("launch", "launch", launch_task, argv, register_launch_schemas)


CLUSTER = Command(
    "cluster",
    "local Ray cluster / status",
    "gosok cluster up|down|status [cluster=local]",
    _cluster,
)
LAUNCH = Command(
    "launch", "launch a training job", "gosok launch job=recipe cluster=local", _launch
)


def _keys(argv: list[str]) -> int:
    from gosok.launcher.results.keys_command import run_keys_command

    return run_keys_command(argv)


def _ledger(argv: list[str]) -> int:
    from gosok.launcher.ledger.command import run_ledger_command

    return run_ledger_command(argv)


KEYS = Command("keys", "signing keys for results", "gosok keys new --out auditor", _keys)
LEDGER = Command(
    "ledger",
    "goodput ledger: report / watch",
    "gosok ledger report --ledger L --out-dir D",
    _ledger,
)
