"""``gosok report``: everything derived from a results file, re-derivable at any time.

- ``gosok report RESULTS.json [--plot out.png]``: verify the seal, print the table.
- ``gosok report verify RESULTS.json ...``: exit 0 if every file's sha256 matches, 1 if not.
- ``gosok report compare A.json B.json``: what changed between two runs.

Renderers are registered per results ``kind`` (collectives, gemm, suite, ...) with
``@renderer(kind)`` / ``@comparer(kind)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gosok.launcher.results import TamperedResultsError, load_results

_RENDERERS: dict[str, Callable[[dict[str, Any], argparse.Namespace], int]] = {}
_COMPARERS: dict[str, Callable[[dict[str, Any], dict[str, Any], argparse.Namespace], int]] = {}


def renderer(kind: str):
    def decorate(fn):
        _RENDERERS[kind] = fn
        return fn

    return decorate


def comparer(kind: str):
    def decorate(fn):
        _COMPARERS[kind] = fn
        return fn

    return decorate


@renderer("collectives")
def render_collectives(doc: dict[str, Any], args: argparse.Namespace) -> int:
    from gosok.benchmarks.collectives_report import plot_busbw, render_table

    print(render_table(doc["records"]))
    if args.plot:
        print(f"plot: {plot_busbw(doc['records'], args.plot)}")
    return 0


def _load_renderers() -> None:
    import importlib

    for module in ("gosok.benchmarks.gemm_report", "gosok.benchmarks.suite_report"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _verify(paths: list[str]) -> int:
    status = 0
    for path in paths:
        try:
            load_results(path)
            print(f"OK       {path}: sha256 matches")
        except TamperedResultsError:
            print(f"TAMPERED {path}: sha256 does not match the content")
            status = 1
        except (OSError, ValueError) as err:
            print(f"INVALID  {path}: {err}")
            status = 1
    return status


def run_report_command(argv: list[str]) -> int:
    _load_renderers()
    if argv and argv[0] == "verify":
        if len(argv) < 2:
            print("usage: gosok report verify RESULTS.json ...", file=sys.stderr)
            return 2
        return _verify(argv[1:])
    if argv and argv[0] == "compare":
        parser = argparse.ArgumentParser(prog="gosok report compare")
        parser.add_argument("baseline")
        parser.add_argument("candidate")
        parser.add_argument(
            "--tolerance",
            type=float,
            default=0.05,
            help="relative drop that counts as a regression (default 0.05)",
        )
        parser.add_argument("--out", help="write the comparison (Markdown) here")
        args = parser.parse_args(argv[1:])
        a, b = load_results(args.baseline), load_results(args.candidate)
        if a["kind"] != b["kind"]:
            print(f"cannot compare kind {a['kind']!r} with {b['kind']!r}", file=sys.stderr)
            return 2
        if a["kind"] not in _COMPARERS:
            print(
                f"no comparison for kind {a['kind']!r}; have: {sorted(_COMPARERS)}", file=sys.stderr
            )
            return 2
        return _COMPARERS[a["kind"]](a, b, args)
    parser = argparse.ArgumentParser(prog="gosok report")
    parser.add_argument("results")
    parser.add_argument("--plot", help="also write a PNG plot here")
    parser.add_argument("--out-dir", help="write Markdown/HTML reports here (suite results)")
    args = parser.parse_args(argv)
    try:
        doc = load_results(args.results)
    except TamperedResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kind = doc.get("kind")
    if kind not in _RENDERERS:
        print(f"no renderer for kind {kind!r}; have: {sorted(_RENDERERS)}", file=sys.stderr)
        return 2
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    return _RENDERERS[kind](doc, args)
