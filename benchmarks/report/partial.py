"""What a run directory holds when its run did not finish: the measurements from its
journal (``launcher.results.journal``), rendered like a finished run's and marked
INCOMPLETE.

Use: ``render_run_dir(Path("outputs/bench/<run>"))`` — the exit code is 1 for an incomplete
run, 2 when the directory holds neither a results file nor a journal.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gosok.launcher.results.journal import JOURNAL_NAME, read_journal


def render_run_dir(run_dir: Path) -> int:
    journal = run_dir / JOURNAL_NAME
    if not journal.is_file():
        print(f"error: {run_dir} holds no results.json and no {JOURNAL_NAME}: not a gosok run")
        return 2
    try:
        header, entries = read_journal(journal)
    except (OSError, ValueError) as err:
        print(f"error: {err}")
        return 2
    kind = str(header.get("kind", "unknown"))
    records = [e["record"] for e in entries if e.get("kind") == kind]
    print(
        f"INCOMPLETE run ({kind}): no results.json; {len(entries)} measurement(s) were "
        f"journaled before the run stopped ({run_dir / JOURNAL_NAME})"
    )
    try:
        if kind == "collectives" and records:
            from gosok.benchmarks.collectives.report import render_table

            print(render_table(records))
        elif kind == "gemm" and records:
            from gosok.benchmarks.compute.report import render_table

            print(render_table(records))
        else:
            counts = Counter(e.get("kind") for e in entries)
            for what, count in sorted(counts.items()):
                print(f"  {what}: {count} record(s)")
            for entry in entries:
                if entry.get("kind") == "suite":
                    print(f"  phase {entry['record'].get('phase')} finished")
    except (KeyError, TypeError, ValueError) as err:
        print(f"error: journal records cannot be rendered: {err}")
        return 2
    print("INCOMPLETE: figures above are what was measured; the run did not finish")
    return 1
