"""The ``gosok`` command. Each sub-command is a ``Command`` record found through the
``gosok.commands`` entry points (``pyproject.toml``), so a package adds a command without
touching this file, and ``gosok --help`` imports nothing heavy.

Hydra-driven commands (``bench``, ``cluster``, ``launch``) take overrides (``key=value``,
group choices such as ``cluster=naver_h200_32``, ``-m`` sweeps, ``--cfg job``,
``hydra.run.dir=...``). Bad input is refused before anything starts (exit 2).

Run: ``gosok --help``; ``gosok bench cluster=local``; ``gosok cluster up``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
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


def _entry_points() -> list[tuple[str, str]]:
    """(name, "module:attribute") of every ``gosok.commands`` entry point, sorted.

    Reading them (``importlib.metadata``) costs more than a tenth of a refusal's time, so
    they are cached per installation: the key is every import-path directory with its
    mtime, which changes when a package is installed, removed or reinstalled there."""
    import hashlib
    import json
    import os

    stamp = []
    for entry in sys.path:
        with contextlib.suppress(OSError):
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
    key = hashlib.sha256(repr((sys.executable, stamp)).encode()).hexdigest()[:20]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    cache = os.path.join(cache_home, "gosok", "cli", f"commands-{key}.json")
    with contextlib.suppress(OSError, ValueError):
        with open(cache) as handle:
            return [tuple(item) for item in json.load(handle)]
    from importlib.metadata import entry_points

    found = sorted((p.name, p.value) for p in entry_points(group=ENTRY_POINT_GROUP))
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        temp = f"{cache}.{os.getpid()}.tmp"
        with open(temp, "w") as handle:
            json.dump(found, handle)
        os.replace(temp, cache)
    return found


def _load(value: str) -> object:
    import importlib

    module, _, attribute = value.partition(":")
    target: object = importlib.import_module(module.strip())
    for part in attribute.strip().split(".") if attribute else []:
        target = getattr(target, part)
    return target


def commands(only: str | None = None) -> dict[str, Command]:
    """Every registered command by name (``only``: just that one, so running a command
    imports no other command's module); a name registered twice is refused."""
    found: dict[str, Command] = {}
    points = _entry_points()
    if only is not None and sum(name == only for name, _ in points) == 1:
        points = [(name, value) for name, value in points if name == only]
    for name, value in points:
        command = _load(value)
        if not isinstance(command, Command) or command.name != name:
            raise TypeError(f"entry point {value!r} is not Command {name!r}")
        if command.name in found:
            raise ValueError(f"gosok command {command.name!r} registered twice")
        found[command.name] = command
    return found


def usage(found: dict[str, Command]) -> str:
    lines = ["usage: gosok <command> [arguments ...]", "", "commands:"]
    name = max((len(c.name) for c in found.values()), default=0) + 2
    summary = max((len(c.summary) for c in found.values()), default=0) + 2
    for c in found.values():
        lines.append(f"  {c.name:<{name}s}{c.summary:<{summary}s}{c.example}".rstrip())
    lines += ["", "Hydra commands also take --cfg job, -m (multirun), --help."]
    return "\n".join(lines)


# ---- Hydra-driven commands -------------------------------------------------------------

_exit_codes: list[int] = []
_task_started: list[str] = []


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, record=True)


def _save_console(console: Any, command: str) -> None:
    """Keep what the run printed as ``<run dir>/<command>-output.log`` beside its results."""
    from pathlib import Path

    from gosok.launcher.results.run_dir import hydra_output_dir

    out_dir = hydra_output_dir()
    if out_dir and out_dir != Path.cwd().resolve() and out_dir.is_dir():
        from gosok.launcher.config import secrets
        from gosok.launcher.results.store import atomic_write_bytes

        text = secrets.current().text(console.export_text())
        atomic_write_bytes(out_dir / f"{command}-output.log", text.encode())


def _write_hydra_files(cfg: Any, command: str) -> None:
    """Hydra's own ``.hydra/`` copies are turned off (they would hold secrets verbatim);
    gosok writes redacted ones: the composed config and the overrides."""
    from pathlib import Path

    import yaml

    from gosok.launcher.config import secrets
    from gosok.launcher.results.run_dir import hydra_output_dir
    from gosok.launcher.results.store import atomic_write_bytes

    out_dir = hydra_output_dir()
    if not out_dir or out_dir == Path.cwd().resolve():
        return
    redactor = secrets.current()
    config = secrets.redacted_config(cfg)
    overrides = [redactor.text(a) for a in sys.argv[1:] if not a.startswith("hydra.output_subdir")]
    atomic_write_bytes(out_dir / ".hydra" / "config.yaml", yaml.safe_dump(config).encode())
    atomic_write_bytes(out_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(overrides).encode())


def _guarded(task: Callable[[Any, Any], int], command: str) -> Callable[[Any], None]:
    """Run a task, turning gosok errors into a clean message and an exit code."""

    def wrapped(cfg: Any) -> None:
        from omegaconf import OmegaConf

        _task_started.append(command)
        if hasattr(sys.stderr, "release"):
            sys.stderr.release()  # composed: what was held goes out as written
        from gosok.launcher.config import secrets
        from gosok.launcher.errors import ConfigError, GosokError

        redactor = secrets.current().merge(secrets.Redactor.for_config(cfg))
        secrets.set_current(redactor)
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, secrets.RedactingStream):
                stream.redactor = redactor
        console = _console()
        _write_hydra_files(cfg, command)
        restore = _bounded_ctrl_c(console)
        try:
            cluster = cfg.get("cluster") if hasattr(cfg, "get") else None
            if cluster is not None and cluster.get("kind") == "local" and cluster.get("name"):
                from gosok.launcher.cluster.local import use_auth

                use_auth(str(cluster.name))  # before anything imports ray
            from hydra.core.hydra_config import HydraConfig

            from gosok.launcher.config.validate import added_key_problems

            added = added_key_problems(cfg, list(HydraConfig.get().overrides.task))
            if added:
                raise ConfigError(added)
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
        finally:
            restore()

    return wrapped


CTRL_C_TEARDOWN_S = 20.0


def _bounded_ctrl_c(console: Any) -> Callable[[], None]:
    """Ctrl-C raises KeyboardInterrupt as usual (the ranks are torn down, the journal
    sealed), and arms a deadline: a teardown still running ``CTRL_C_TEARDOWN_S`` later is
    cut short by exiting (Ray removes a driver's actors and placement groups when it goes).
    Returns what puts the previous handler back."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def give_up() -> None:
        console.print(f"teardown still running {CTRL_C_TEARDOWN_S:.0f}s after Ctrl-C: exiting")
        sys.stdout.flush()
        os._exit(130)

    def on_ctrl_c(signum: int, frame: Any) -> None:
        timer = threading.Timer(CTRL_C_TEARDOWN_S, give_up)
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    return lambda: signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _one_compose(args: list[str]) -> Iterator[None]:
    """Hydra composes the config twice for a run: once only to read ``hydra.mode``, which
    no gosok config sets. Unless the command line names it (or brings its own config
    directory or name), that first compose is skipped: half of ``gosok``'s start-up."""
    from hydra._internal.hydra import Hydra

    own = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")
    if any("hydra.mode" in a or a.startswith(own) for a in args) or not hasattr(Hydra, "get_mode"):
        yield
        return
    original = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_mode = original  # type: ignore[method-assign]


def process_start_unix() -> float | None:
    """When this process started (``time.time()`` scale, ~10 ms resolution, from
    /proc), or None where /proc is missing."""
    import os
    import time

    try:
        with open("/proc/self/stat") as handle:
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def run_hydra(
    command: str,
    config_name: str,
    task: Callable[[Any, Any], int],
    args: list[str],
    schemas: Callable[[], None] = lambda: None,
) -> int:
    """Compose ``configs/<config_name>.yaml`` with ``args`` and run ``task(cfg, console)``."""
    import hydra

    from gosok.launcher.config import secrets
    from gosok.launcher.config.catalogue import config_dir
    from gosok.launcher.config.schema import register_schemas

    schemas()
    register_schemas()
    if not any(a.startswith(("hydra.output_subdir", "++hydra.output_subdir")) for a in args):
        # gosok writes redacted copies itself; Hydra wants overrides contiguous.
        first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), 0)
        args = [*args[:first], "hydra.output_subdir=null", *args[first:]]
    redactor = secrets.Redactor.for_argv(args).merge(secrets.Redactor.for_config({}))
    secrets.set_current(redactor)
    sys.argv = [f"gosok-{command}", *args]
    _exit_codes.clear()
    _task_started.clear()
    saved = sys.stdout, sys.stderr
    sys.stdout = secrets.RedactingStream(sys.stdout, redactor)
    sys.stderr = secrets.RedactingStream(sys.stderr, redactor)
    sys.stderr.hold()  # until the task starts: Hydra's refusal of a key is reworded below
    try:
        with _one_compose(args):
            hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
                _guarded(task, command)
            )()
    except SystemExit as done:
        if done.code == 1 and not _task_started:
            # Hydra refused the overrides (unknown key, wrong type): bad input, exit 2.
            from gosok.launcher.config.validate import reword_unknown_key

            if isinstance(sys.stderr, secrets.RedactingStream):
                sys.stderr.release(reword_unknown_key)
            raise SystemExit(2) from None
        raise
    finally:
        if isinstance(sys.stderr, secrets.RedactingStream):
            sys.stderr.release()
        sys.stdout, sys.stderr = saved
    return max(_exit_codes, default=0)


def _exit_process(status: Any) -> None:
    """End the ``gosok`` process with ``status`` (as ``sys.exit`` takes it). When the
    command connected to Ray, the interpreter's own teardown (Ray's native libraries)
    takes about half a second after everything is written, so that part is skipped:
    non-daemon threads are joined and exit handlers run (Ray disconnects, logs flush),
    then the process ends."""
    connect = sys.modules.get("gosok.launcher.cluster.connect")
    if connect is None or not connect.connected():
        sys.exit(status)
    import atexit
    import os
    import threading

    code = status if isinstance(status, int) else (0 if status is None else 1)
    if not isinstance(status, int | None):
        print(status, file=sys.stderr)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code & 0xFF)


def main(argv: list[str] | None = None) -> None:
    """The ``gosok`` command (``argv``: run in-process, as tests do; exits by raising
    ``SystemExit`` then)."""
    as_process = argv is None
    if as_process:
        import gc

        # Composing a config allocates hundreds of thousands of small objects, none
        # garbage: collecting the young generation every 700 costs ~10% of a start-up.
        gc.set_threshold(50_000, 20, 20)
    args = list(sys.argv[1:] if argv is None else argv)
    found = commands(only=args[0] if args else None)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(found))
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in found:
        print(f"gosok: unknown command {name!r}\n\n{usage(found)}", file=sys.stderr)
        sys.exit(2)
    if not as_process:
        sys.exit(found[name].run(rest))
    try:
        status = found[name].run(rest)
    except SystemExit as done:
        status = done.code
    _exit_process(status)


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: entry points hold its Command class.
    from gosok.launcher import cli

    cli.main()
