"""``gosok report``: everything derived from a results file, re-derivable at any time.

- ``gosok report RESULTS.json [--plot out.png]``: verify the seal, print the table.
- ``gosok report verify RESULTS.json ...``: exit 0 if every file's sha256 matches, 1 if not.
- ``gosok report compare A.json B.json``: what changed between two runs.

Each results ``kind`` (collectives, gemm, suite, ...) is rendered and compared by the
``Benchmark`` record that writes it (``core.registry.for_kind``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gosok.launcher.results.store import TamperedResultsError, load_results


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
    from gosok.benchmarks.core.registry import for_kind

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
        record = for_kind(a["kind"])
        if record is None or record.compare is None:
            print(f"no comparison for results of kind {a['kind']!r}", file=sys.stderr)
            return 2
        return record.compare(a, b, args)
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
    record = for_kind(kind)
    if record is None:
        print(f"no renderer for results of kind {kind!r}", file=sys.stderr)
        return 2
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    return record.render(doc, args)
