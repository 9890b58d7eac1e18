"""The ``ledger:`` config group shared by ``gosok launch`` and ``gosok bench``: where the
goodput ledger lives, which project a run is booked to, and how nodes are sampled.

Use::

    @dataclass
    class LaunchConfig:
        ledger: LedgerConfig = field(default_factory=LedgerConfig)

    problems = validate_ledger(cfg.ledger)     # [] or one line per bad field

Overrides: ``ledger.path=/data/ledger.sqlite ledger.project=llm ledger.enabled=false``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_MAX_CHARS = 64
MIN_SAMPLE_INTERVAL_S = 0.05


@dataclass
class LedgerConfig:
    """Recording of every job into the goodput ledger (see ``gosok ledger report``)."""

    #: SQLite file, ``sqlite:///relative`` or ``sqlite:////absolute``, or a PostgreSQL server
    #: ``postgresql://user@host:port/db`` (password from PGPASSWORD/PGPASSFILE/PGSERVICE);
    #: None: the user data directory (``$XDG_DATA_HOME/gosok/ledger.sqlite`` or
    #: ``~/.local/share/gosok/...``).
    path: str | None = None
    #: The project the job's device-hours are booked to (1-64 printable characters).
    project: str = "default"
    #: False: record nothing and sample nothing.
    enabled: bool = True
    #: Seconds between utilisation samples on each node while ranks are placed.
    sample_interval_s: float = 5.0
    #: Utilisation (GPU %, CPU % on the CPU fallback) below which a device counts as idle.
    idle_below: float = 5.0
    #: Seconds a device must stay idle before an idle span is recorded.
    idle_for_s: float = 60.0


def _number(key: str, value: Any, allowed: str, ok: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"{key}={value!r} is not a number; allowed: {allowed}"]
    if not math.isfinite(value) or not ok(value):
        return [f"{key}={value} is out of range; allowed: {allowed}"]
    return []


def _path_problem(value: str | None) -> str | None:
    from gosok.launcher.ledger.backends import ServerURL
    from gosok.launcher.ledger.db import resolve_ledger_path

    try:
        path = resolve_ledger_path(value)
    except ValueError as err:
        return str(err)
    if isinstance(path, ServerURL):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return (
                f"ledger.path={path!r}: a PostgreSQL ledger needs psycopg; allowed: install "
                "gosok with it (pip install 'gosok[postgres]') or a SQLite file"
            )
        return None
    if not isinstance(path, Path):
        return None
    shown = f"ledger.path={value!r}" if value else f"ledger.path (default {str(path)!r})"
    if path.is_dir():
        return f"{shown} is a directory; allowed: a SQLite file path"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{shown}: the file is not readable and writable by this user"
        return None
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{shown}: {str(ancestor)!r} is not a directory, so the file cannot be created"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{shown}: cannot create it, {str(ancestor)!r} is not writable by this user"
    return None


def validate_ledger(ledger: Any) -> list[str]:
    """Every problem of a ``LedgerConfig``, one line each naming the field, the value and
    what is allowed. The path is checked only when recording is enabled."""
    problems: list[str] = []
    if not isinstance(ledger.enabled, bool):
        problems.append(f"ledger.enabled={ledger.enabled!r}; allowed: true or false")
    project = ledger.project
    if (
        not isinstance(project, str)
        or not 1 <= len(project) <= PROJECT_MAX_CHARS
        or not project.isprintable()
        or project != project.strip()
    ):
        problems.append(
            f"ledger.project={project!r} is not allowed; allowed: 1-{PROJECT_MAX_CHARS} "
            "printable characters, no leading or trailing space"
        )
    problems += _number(
        "ledger.sample_interval_s",
        ledger.sample_interval_s,
        f"a finite number of seconds >= {MIN_SAMPLE_INTERVAL_S}",
        lambda v: v >= MIN_SAMPLE_INTERVAL_S,
    )
    problems += _number(
        "ledger.idle_below",
        ledger.idle_below,
        "a utilisation percentage > 0 and <= 100",
        lambda v: 0 < v <= 100,
    )
    problems += _number(
        "ledger.idle_for_s",
        ledger.idle_for_s,
        "a finite number of seconds > 0",
        lambda v: v > 0,
    )
    if ledger.enabled is True:
        problem = _path_problem(ledger.path)
        if problem:
            problems.append(problem)
    return problems
