"""``gosok ledger report|watch``: the goodput ledger from the command line.

Use::

    gosok ledger report --ledger ~/.local/share/gosok/ledger.sqlite --project llm \\
        --since 2025-01-01 --out-dir ledger-report/
    gosok ledger watch --cluster h200 [--interval-s 5] [--duration-s 3600] \\
        [--idle-below 5] [--idle-for-s 60]

or from Python, ``run_ledger_command(["report", "--out-dir", "r/"]) -> exit code``.
``--ledger`` defaults to the user data directory (see ``db.default_ledger_path``).
``report`` prints a table of jobs (goodput, device-hours) and the files it wrote; ``watch``
samples this node until ``--duration-s`` passes or Ctrl-C. Bad input gives one line on
stderr naming the option, the value and what is allowed, and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class _BadInput(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _BadInput(f"{self.prog}: {message}")


def _number(minimum: float, maximum: float | None = None, *, above: bool = False):
    if maximum is not None:
        allowed = f"a finite number from {minimum:g} to {maximum:g}"
    else:
        allowed = f"a finite number {'>' if above else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > minimum if above else value >= minimum)
        if not ok or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be {allowed}")
        return value

    parse.__name__ = "number"
    return parse


def _day(text: str) -> float:
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: must be a date YYYY-MM-DD (UTC midnight)"
        ) from None
    return day.replace(tzinfo=timezone.utc).timestamp()


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gosok ledger", description="Where the allocated GPU-hours went.")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ledger_help = "ledger file or sqlite:/// URL (default: the user data directory)"

    report = actions.add_parser("report", help="write ledger.md/.html/.csv and print a summary")
    report.add_argument("--ledger", default=None, help=ledger_help)
    report.add_argument("--project", type=_text, default=None)
    report.add_argument("--since", type=_day, default=None, help="YYYY-MM-DD (UTC)")
    report.add_argument("--out-dir", type=_text, required=True)

    watch = actions.add_parser("watch", help="sample this node into the ledger")
    watch.add_argument("--ledger", default=None, help=ledger_help)
    watch.add_argument("--cluster", type=_text, required=True)
    watch.add_argument("--node", type=_text, default=None, help="default: the host name")
    watch.add_argument("--interval-s", type=_number(0, above=True), default=5.0)
    watch.add_argument(
        "--duration-s", type=_number(0, above=True), default=None, help="default: until Ctrl-C"
    )
    watch.add_argument("--idle-below", type=_number(0, 100), default=5.0, help="util %%")
    watch.add_argument("--idle-for-s", type=_number(0), default=60.0)
    return parser


def _open_ledger(value: str | None, must_exist: bool) -> Any:
    from .db import Ledger, resolve_ledger_path

    try:
        path = resolve_ledger_path(value)
    except ValueError as err:
        raise _BadInput(f"--ledger: {err}") from None
    if must_exist and isinstance(path, Path) and not path.is_file():
        raise _BadInput(f"--ledger {str(path)!r}: no such file; give an existing ledger file")
    try:
        return Ledger.open(path)
    except (OSError, RuntimeError, sqlite3.Error) as err:
        raise _BadInput(f"--ledger {str(path)!r}: cannot open as a ledger: {err}") from None


def _report(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .report import goodput_text, job_rows, write_report

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise _BadInput(f"--out-dir {args.out_dir!r}: is a file; give a directory")
    with _open_ledger(args.ledger, must_exist=True) as ledger:
        paths = write_report(ledger, out_dir, project=args.project, since_unix=args.since)
        rows = job_rows(ledger, args.project, args.since)
        held = (
            sorted({r["project"] for r in job_rows(ledger, None, args.since)}) if not rows else []
        )
    table = Table(title=f"goodput ledger: {len(rows)} jobs")
    for column in ("job", "project", "cluster", "devices", "device-hours", "goodput", "exit"):
        table.add_column(column, justify="left" if column in ("job", "project") else "right")
    for r in rows:
        table.add_row(
            r["job_id"],
            r["project"],
            r["cluster"],
            f"{r['gpus']} x {r['gpu_type'] or '?'}",
            f"{r['device_hours']:.2f} {r['unit']}",
            goodput_text(r["goodput"]),
            "running" if r["running"] else (r["exit_status"] or ""),
        )
    console.print(table)
    if not rows and (args.project or args.since):
        asked = f"project {args.project!r}" if args.project else "that period"
        console.print(
            f"no jobs for {asked}; this ledger holds project(s): {', '.join(held) or 'none'} "
            "(a run is booked with ledger.project=NAME)"
        )
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")
    return 0


def _watch(args: argparse.Namespace, console: Any) -> int:
    from .watch import watch

    with _open_ledger(args.ledger, must_exist=False) as ledger:
        console.print(
            f"watching {args.node or 'this node'} of {args.cluster} every {args.interval_s:g}s "
            f"into {ledger.path}" + ("" if args.duration_s else " (Ctrl-C to stop)")
        )
        summary = watch(
            ledger,
            args.cluster,
            interval_s=args.interval_s,
            duration_s=args.duration_s,
            idle_below=args.idle_below,
            idle_for_s=args.idle_for_s,
            node=args.node,
        )
    console.print(
        f"{summary['node']}: {summary['samples']} samples, {summary['idle_spans']} idle spans "
        f"in {summary['seconds']:.0f}s" + (" (interrupted)" if summary["interrupted"] else "")
    )
    return 0


def run_ledger_command(argv: list[str]) -> int:
    """``gosok ledger ...``; returns the exit code (2 for bad input)."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
        return (_report if args.action == "report" else _watch)(args, console)
    except _BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
