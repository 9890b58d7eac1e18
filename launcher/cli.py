"""The ``gosok`` command. Each sub-command is a ``Command`` record found through the
``gosok.commands`` entry points (``pyproject.toml``), so a package adds a command without
touching this file, and ``gosok --help`` imports nothing heavy.

Hydra-driven commands (``bench``, ``cluster``, ``launch``) take overrides (``key=value``,
group choices such as ``cluster=naver_h200_32``, ``-m`` sweeps, ``--cfg job``,
``hydra.run.dir=...``). Bad input is refused before anything starts (exit 2).

Run: ``gosok --help``; ``gosok bench cluster=local``; ``gosok cluster up``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "gosok.commands"


@dataclass(frozen=True)
class Command:
    """One ``gosok <name>`` sub-command: ``run(argv) -> exit code``."""

    name: str
    summary: str
    example: str
    run: Callable[[list[str]], int]


def commands() -> dict[str, Command]:
    """Every registered command by name; a name registered twice is refused."""
    from importlib.metadata import entry_points

    found: dict[str, Command] = {}
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        command = point.load()
        if not isinstance(command, Command) or command.name != point.name:
            raise TypeError(f"entry point {point.value!r} is not Command {point.name!r}")
        if command.name in found:
            raise ValueError(f"gosok command {command.name!r} registered twice")
        found[command.name] = command
    return found


def usage(found: dict[str, Command]) -> str:
    lines = ["usage: gosok <command> [arguments ...]", "", "commands:"]
    lines += [f"  {c.name:<9s}{c.summary:<40s}{c.example}" for c in found.values()]
    lines += ["", "Hydra commands also take --cfg job, -m (multirun), --help."]
    return "\n".join(lines)


# ---- Hydra-driven commands -------------------------------------------------------------

_exit_codes: list[int] = []


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, record=True)


def _save_console(console: Any, command: str) -> None:
    """Keep what the run printed as ``<run dir>/<command>-output.log`` beside its results."""
    from pathlib import Path

    from gosok.launcher.results.run_dir import hydra_output_dir

    out_dir = hydra_output_dir()
    if out_dir and out_dir != Path.cwd().resolve() and out_dir.is_dir():
        (out_dir / f"{command}-output.log").write_text(console.export_text())


def _guarded(task: Callable[[Any, Any], int], command: str) -> Callable[[Any], None]:
    """Run a task, turning gosok errors into a clean message and an exit code."""

    def wrapped(cfg: Any) -> None:
        from omegaconf import OmegaConf

        from gosok.launcher.errors import ConfigError, GosokError

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
            from rich.markup import escape

            console.print(f"[bold red]error:[/] {escape(str(err))}", markup=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]: ranks and placement groups torn down")
            sys.exit(130)

    return wrapped


def run_hydra(
    command: str,
    config_name: str,
    task: Callable[[Any, Any], int],
    args: list[str],
    schemas: Callable[[], None] = lambda: None,
) -> int:
    """Compose ``configs/<config_name>.yaml`` with ``args`` and run ``task(cfg, console)``."""
    import hydra

    from gosok.launcher.config.catalogue import config_dir
    from gosok.launcher.config.schema import register_schemas

    schemas()
    register_schemas()
    sys.argv = [f"gosok-{command}", *args]
    _exit_codes.clear()
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
        _guarded(task, command)
    )()
    return max(_exit_codes, default=0)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(found))
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in found:
        print(f"gosok: unknown command {name!r}\n\n{usage(found)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(found[name].run(rest))


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: entry points hold its Command class.
    from gosok.launcher import cli

    cli.main()
