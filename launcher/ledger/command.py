"""``gosok ledger report|watch|allocate|serve|push``: the goodput ledger from the command
line.

Use::

    gosok ledger report --ledger ~/.local/share/gosok/ledger.sqlite --project llm \\
        --since 2025-01-01 --out-dir ledger-report/
    gosok ledger report --programme --ledger postgresql://auditor@db/ledger --out-dir r/
    gosok ledger watch --cluster h200 [--interval-s 5] [--duration-s 3600] \\
        [--idle-below 5] [--idle-for-s 60]
    gosok ledger allocate --project llm --cluster h200 --provider cloud-a --gpu-type H200 \\
        --gpus 64 --from 2026-12-01 --to 2027-03-01      # or --csv grants.csv
    gosok ledger serve --port 9464 [--host 127.0.0.1]   # Prometheus /metrics
    gosok ledger push                                    # writes kept while it was away

or from Python, ``run_ledger_command(["report", "--out-dir", "r/"]) -> exit code``.
``--ledger`` defaults to the user data directory (see ``db.default_ledger_path``).
``report`` prints a table of jobs (goodput, device-hours) and the files it wrote; ``watch``
samples this node until ``--duration-s`` passes or Ctrl-C. Bad input gives one line on
stderr naming the option, the value and what is allowed, and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import math
import signal
import sqlite3
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


class _BadInput(Exception):
    pass


class _Unreachable(Exception):
    """The ledger's server did not answer (exit 1: not the input's fault)."""


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


def _when(text: str) -> float:
    """A UTC date ``YYYY-MM-DD`` or time ``YYYY-MM-DDTHH:MM[:SS]``."""
    for spelling in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.strptime(text, spelling)
        except ValueError:
            continue
        return moment.replace(tzinfo=timezone.utc).timestamp()
    raise argparse.ArgumentTypeError(
        f"{text!r} is not allowed: must be YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC)"
    )


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a whole number >= 1")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a port 0-65535")
    return int(text)


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
    report.add_argument(
        "--programme",
        action="store_true",
        help="allocated, used, productive and idle GPU-hours per provider, cluster, GPU type "
        "and project (programme.md/.html/.csv)",
    )
    report.add_argument(
        "--stretch-h",
        type=_number(0, above=True),
        default=1.0,
        help="flag spans of at least this many hours in which an allocation ran nothing",
    )
    report.add_argument(
        "--idle-below",
        type=_number(0, 100),
        default=5.0,
        help="utilisation %% below which a watched device counts as idle (--programme)",
    )

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

    allocate = actions.add_parser("allocate", help="record what the programme granted")
    allocate.add_argument("--ledger", default=None, help=ledger_help)
    allocate.add_argument("--csv", type=_text, default=None, help=f"columns: {', '.join(CSV)}")
    allocate.add_argument("--project", type=_text)
    allocate.add_argument("--cluster", type=_text)
    allocate.add_argument("--provider", type=_text, default=None)
    allocate.add_argument("--gpu-type", type=_text)
    allocate.add_argument("--gpus", type=_count)
    allocate.add_argument("--from", dest="start", type=_when, help="YYYY-MM-DD[THH:MM] UTC")
    allocate.add_argument("--to", dest="end", type=_when, help="YYYY-MM-DD[THH:MM] UTC")

    serve = actions.add_parser("serve", help="Prometheus metrics of the ledger at /metrics")
    serve.add_argument("--ledger", default=None, help=ledger_help)
    serve.add_argument("--port", type=_port, default=9464)
    serve.add_argument("--host", type=_text, default="127.0.0.1")
    serve.add_argument(
        "--duration-s", type=_number(0, above=True), default=None, help="default: until stopped"
    )

    push = actions.add_parser("push", help="send writes kept while the ledger was away")
    push.add_argument("--ledger", default=None, help="send them here instead (default: theirs)")
    return parser


CSV = ("project", "cluster", "provider", "gpu_type", "gpus", "from", "to")


def _open_ledger(value: str | None, must_exist: bool) -> Any:
    from .db import Ledger, resolve_ledger_path

    try:
        path = resolve_ledger_path(value)
    except ValueError as err:
        raise _BadInput(f"--ledger: {err}") from None
    if must_exist and isinstance(path, Path) and not path.is_file():
        raise _BadInput(f"--ledger {str(path)!r}: no such file; give an existing ledger file")
    from .backends import is_transient

    try:
        return Ledger.open(path, timeout_s=10.0)
    except ValueError as err:  # a server ledger without its driver
        raise _BadInput(f"--ledger: {err}") from None
    except Exception as err:
        if is_transient(err):
            first = (str(err).strip().splitlines() or [""])[0]
            raise _Unreachable(
                f"--ledger {str(path)!r}: the server did not answer ({type(err).__name__}: "
                f"{first}); check the host, and the password in PGPASSWORD, PGPASSFILE or "
                "PGSERVICE"
            ) from None
        if not (isinstance(err, OSError | RuntimeError | sqlite3.Error) or _is_db_error(err)):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        raise _BadInput(f"--ledger {str(path)!r}: cannot open as a ledger: {first}") from None


def _report(args: argparse.Namespace, console: Any) -> int:
    from rich.table import Table

    from .report import goodput_text, job_rows, write_report

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise _BadInput(f"--out-dir {args.out_dir!r}: is a file; give a directory")
    if args.programme:
        return _programme(args, out_dir, console)
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


def _programme(args: argparse.Namespace, out_dir: Path, console: Any) -> int:
    from rich.table import Table

    from .report import write_programme

    with _open_ledger(args.ledger, must_exist=True) as ledger:
        paths, view = write_programme(
            ledger, out_dir, stretch_s=args.stretch_h * 3600.0, idle_below=args.idle_below
        )
    table = Table(title=f"programme: {len(view['groups'])} groups, largest gap first")
    columns = ("provider", "cluster", "GPU type", "project", "allocated", "used", "productive",
               "idle", "gap")  # fmt: skip
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < 4 else "right")
    for g in view["groups"]:
        table.add_row(
            g["provider"] or "-",
            g["cluster"],
            g["gpu_type"],
            g["project"],
            *(f"{g[f'{s}_hours']:.2f}" for s in ("allocated", "used", "productive", "idle", "gap")),
        )
    console.print(table)
    if not view["groups"]:
        console.print("no allocations in this ledger: record them with `gosok ledger allocate`")
    for s in view["stretches"]:
        console.print(
            f"IDLE STRETCH {s['cluster']}/{s['project']}: {s['gpus']} GPUs ran nothing for "
            f"{(s['end_unix'] - s['start_unix']) / 3600:.2f} h from "
            f"{datetime.fromtimestamp(s['start_unix'], timezone.utc):%Y-%m-%d %H:%M} UTC"
        )
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")
    return 0


def _grants(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.csv is None:
        missing = [f"--{n.replace('_', '-')}" for n in ("project", "cluster", "gpu_type", "gpus")
                   if getattr(args, n) is None]  # fmt: skip
        missing += [flag for flag, v in (("--from", args.start), ("--to", args.end)) if v is None]
        if missing:
            raise _BadInput(f"gosok ledger allocate: missing {', '.join(missing)} (or give --csv)")
        rows = [vars(args) | {"from": args.start, "to": args.end}]
        where = ["the command line"]
    else:
        try:
            with open(args.csv, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                absent = [c for c in CSV if c not in (reader.fieldnames or [])]
                if absent:
                    raise _BadInput(
                        f"--csv {args.csv!r}: missing column(s) {', '.join(absent)}; "
                        f"allowed header: {','.join(CSV)}"
                    )
                raw = list(reader)
        except OSError as err:
            raise _BadInput(f"--csv {args.csv!r}: cannot read it ({err.strerror})") from None
        rows, where = [], []
        for n, row in enumerate(raw, start=2):
            parsed = {}
            for column, parse in (("project", _text), ("cluster", _text), ("gpu_type", _text),
                                  ("gpus", _count), ("from", _when), ("to", _when)):  # fmt: skip
                try:
                    parsed[column] = parse((row.get(column) or "").strip())
                except argparse.ArgumentTypeError as err:
                    raise _BadInput(f"--csv {args.csv!r} line {n}, {column}: {err}") from None
            rows.append(parsed | {"provider": (row.get("provider") or "").strip()})
            where.append(f"line {n}")
    grants = []
    for row, place in zip(rows, where, strict=True):
        if not row["to"] > row["from"]:
            raise _BadInput(f"{place}: --to must be after --from")
        grants.append(
            {
                "project": row["project"],
                "cluster": row["cluster"],
                "provider": row.get("provider") or "",
                "gpu_type": row["gpu_type"],
                "gpus": row["gpus"],
                "start_unix": row["from"],
                "end_unix": row["to"],
            }
        )
    return grants


def _allocate(args: argparse.Namespace, console: Any) -> int:
    grants = _grants(args)
    with _open_ledger(args.ledger, must_exist=False) as ledger:
        for grant in grants:
            allocation_id = ledger.allocate(**grant)
            console.print(
                f"{allocation_id}: {grant['gpus']} x {grant['gpu_type']} on {grant['cluster']} "
                f"for {grant['project']}, {_utc_text(grant['start_unix'])} to "
                f"{_utc_text(grant['end_unix'])}"
            )
    return 0


def _utc_text(unix: float) -> str:
    return f"{datetime.fromtimestamp(unix, timezone.utc):%Y-%m-%d %H:%M} UTC"


def _serve(args: argparse.Namespace, console: Any) -> int:
    from .db import Ledger
    from .metrics import serve

    _open_ledger(args.ledger, must_exist=False).close()  # refuse a bad ledger before serving
    try:
        serve(
            lambda: Ledger.open(args.ledger, timeout_s=10.0),
            args.port,
            args.host,
            ready=lambda port: console.print(
                f"serving the ledger's metrics at http://{args.host}:{port}/metrics"
            ),
            duration_s=args.duration_s,
        )
    except OSError as err:
        raise _BadInput(f"--port {args.port}: cannot listen on {args.host} ({err})") from None
    return 0


def _push(args: argparse.Namespace, console: Any) -> int:
    from .writer import push

    if args.ledger is not None:
        _open_ledger(args.ledger, must_exist=False).close()
    sent, kept = push(args.ledger, say=console.print)
    console.print(f"{sent} buffer(s) sent, {kept} kept")
    return 1 if kept else 0


def _watch(args: argparse.Namespace, console: Any) -> int:
    from .watch import watch
    from .writer import LedgerWriter

    with _open_ledger(args.ledger, must_exist=False) as ledger:
        where = ledger.path
    console.print(
        f"watching {args.node or 'this node'} of {args.cluster} every {args.interval_s:g}s "
        f"into {where}" + ("" if args.duration_s else " (Ctrl-C or SIGTERM to stop)")
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    writer = LedgerWriter(args.ledger, say=console.print)
    try:
        summary = watch(
            writer,
            args.cluster,
            interval_s=args.interval_s,
            duration_s=args.duration_s,
            idle_below=args.idle_below,
            idle_for_s=args.idle_for_s,
            node=args.node,
            stop=stop,
        )
    finally:
        writer.close()
    console.print(
        f"{summary['node']}: {summary['samples']} samples, {summary['idle_spans']} idle spans "
        f"in {summary['seconds']:.0f}s" + (" (interrupted)" if summary["interrupted"] else "")
    )
    return 0


def _is_db_error(err: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(err, psycopg.Error)


def run_ledger_command(argv: list[str]) -> int:
    """``gosok ledger ...``; returns the exit code (2 for bad input)."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        args = build_parser().parse_args(argv)
        actions = {"report": _report, "watch": _watch, "allocate": _allocate,
                   "serve": _serve, "push": _push}  # fmt: skip
        return actions[args.action](args, console)
    except _BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except _Unreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # the ledger failed under the command (a server restart)
        from .backends import is_transient

        if not (is_transient(err) or isinstance(err, sqlite3.Error) or _is_db_error(err)):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"error: the ledger failed: {type(err).__name__}: {first}", file=sys.stderr)
        return 1
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
