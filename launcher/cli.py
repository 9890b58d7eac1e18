"""The ``gosok`` command: ``gosok bench|cluster|report|launch ...``.

``bench``, ``cluster`` and ``launch`` take Hydra overrides (``key=value``, group choices such
as ``cluster=naver_h200_32``, ``-m`` sweeps, ``--cfg job``, ``hydra.run.dir=...``). Bad input
is refused before anything starts: Hydra refuses unknown keys and wrong types; gosok's
validation refuses values outside their allowed sets and ranges (exit 2).

Run: ``gosok --help``; ``gosok bench cluster=local``; ``gosok cluster up``;
``gosok report outputs/bench/<run>/results.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

USAGE = """usage: gosok <command> [hydra overrides ...]

commands:
  bench      run a benchmark or suite      gosok bench cluster=local bench=collectives
  cluster    local Ray cluster / status    gosok cluster up|down|status [cluster=local]
  launch     launch a training job         gosok launch job=recipe cluster=local
  report     render / verify / compare     gosok report [verify|compare] results.json ...

Hydra options work after the command: --cfg job, -m (multirun), --help.
"""

_exit_codes: list[int] = []


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, record=True)


def _save_console(console: Any, command: str) -> None:
    """Keep what the run printed as ``<run dir>/<command>-output.log`` beside its results."""
    from pathlib import Path

    from gosok.launcher.run_dir import hydra_output_dir

    out_dir = hydra_output_dir()
    if out_dir and out_dir != Path.cwd().resolve() and out_dir.is_dir():
        (out_dir / f"{command}-output.log").write_text(console.export_text())


def _guarded(task: Callable[[Any, Any], int], command: str) -> Callable[[Any], None]:
    """Run a task, turning gosok errors into a clean message and an exit code."""
    from gosok.launcher.errors import GosokError

    def wrapped(cfg: Any) -> None:
        from omegaconf import OmegaConf

        from gosok.launcher.errors import ConfigError

        console = _console()
        try:
            missing = sorted(OmegaConf.missing_keys(cfg))
            if missing:
                raise ConfigError(
                    [f"{key} is required and has no value; set {key}=..." for key in missing]
                )
            _exit_codes.append(task(cfg, console))
            _save_console(console, command)
        except GosokError as err:
            console.print(f"[bold red]error:[/] {err}", markup=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]: ranks and placement groups torn down")
            sys.exit(130)

    return wrapped


def bench_task(cfg: Any, console: Any) -> int:
    from gosok.benchmarks.registry import driver_for
    from gosok.launcher.errors import ConfigError

    name = cfg.suite.name if cfg.get("suite") else cfg.bench.name
    try:
        driver = driver_for(name)
    except KeyError as err:
        raise ConfigError([str(err.args[0])]) from err
    return driver(cfg, console)


def cluster_task(cfg: Any, console: Any) -> int:
    from gosok.launcher.cluster_command import run_cluster_command

    return run_cluster_command(cfg, console)


def launch_task(cfg: Any, console: Any) -> int:
    from gosok.launcher.launch_command import launch_task as run_launch

    return run_launch(cfg, console)


COMMANDS: dict[str, tuple[str, Callable[[Any, Any], int]]] = {
    "bench": ("bench", bench_task),
    "cluster": ("cluster_command", cluster_task),
    "launch": ("launch", launch_task),
}


def run_hydra(command: str, args: list[str]) -> int:
    import hydra

    from gosok.benchmarks import drivers  # noqa: F401  (schemas of every driver)
    from gosok.launcher import job_schema  # noqa: F401  (schemas of gosok launch)
    from gosok.launcher.catalogue import config_dir
    from gosok.launcher.schema import register_schemas

    register_schemas()
    config_name, task = COMMANDS[command]
    sys.argv = [f"gosok-{command}", *args]
    _exit_codes.clear()
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
        _guarded(task, command)
    )()
    return max(_exit_codes, default=0)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "report":
        from gosok.launcher.report_command import run_report_command

        sys.exit(run_report_command(rest))
    if command == "cluster":
        actions = ("up", "down", "status")
        if not rest or rest[0] not in actions:
            print(f"gosok cluster: action must be one of {', '.join(actions)}", file=sys.stderr)
            sys.exit(2)
        rest = [f"action={rest[0]}", *rest[1:]]
    if command not in COMMANDS:
        print(f"gosok: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_hydra(command, rest))


if __name__ == "__main__":
    main()
