"""Two runs side by side: one row per figure (higher is better), a drop of more than the
tolerance flagged as a regression. Every results kind compares through here: a benchmark
hands its figures (``name -> (value, unit)``) from each re-derived document.

Use: ``rows = figure_rows(figures_a, figures_b, tolerance)``; ``print_rows(rows, tolerance)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

REGRESSION, IMPROVED, SAME, CHANGED = "REGRESSION", "improved", "same", "changed"
Figures = dict[str, tuple[float | None, str]]


@dataclass(frozen=True)
class CompareRow:
    scope: str  # cluster | node <label> | an op, a kernel
    figure: str
    unit: str
    baseline: float | str | None
    candidate: float | str | None
    change: float | None  # relative, (candidate - baseline) / baseline
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def figure_row(scope: str, figure: str, unit: str, a: Any, b: Any, tol: float) -> CompareRow:
    if a is None or b is None:
        return CompareRow(scope, figure, unit, a, b, None, CHANGED if a != b else SAME)
    change = (b - a) / a if a else 0.0
    if change < -tol:
        status = REGRESSION
    elif change > tol:
        status = IMPROVED
    else:
        status = SAME
    return CompareRow(scope, figure, unit, a, b, change, status)


def figure_rows(a: Figures, b: Figures, tolerance: float, scope: str = "") -> list[CompareRow]:
    """One row per figure either run has (a figure only one has is "changed")."""
    rows = []
    for name in sorted(set(a) | set(b)):
        unit = (a.get(name) or b.get(name))[1]  # type: ignore[index]
        va, vb = (a.get(name) or (None,))[0], (b.get(name) or (None,))[0]
        rows.append(figure_row(scope, name, unit, va, vb, tolerance))
    return rows


def regressions(rows: list[CompareRow]) -> list[CompareRow]:
    return [r for r in rows if r.status == REGRESSION]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_rows(rows: list[CompareRow], title: str) -> int:
    """The comparison as a table; returns the exit code (1 when anything regressed)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    table = Table(title=title)
    for column in ("status", "scope", "figure", "baseline", "candidate", "change"):
        table.add_column(column)
    for r in rows:
        style = "bold red" if r.status == REGRESSION else ("green" if r.status == IMPROVED else "")
        status = f"[{style}]{r.status}[/]" if style else r.status
        unit = f" {r.unit}" if r.unit else ""
        change = f"{r.change:+.1%}" if r.change is not None else ""
        table.add_row(
            status, r.scope, r.figure, f"{fmt(r.baseline)}{unit}", f"{fmt(r.candidate)}{unit}",
            change,
        )  # fmt: skip
    console.print(table)
    found = regressions(rows)
    console.print(f"{len(found)} regression(s)")
    return 1 if found else 0
