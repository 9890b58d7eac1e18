"""The goodput ledger as files: ``ledger.md``, a self-contained ``ledger.html`` (plots inline
as base64 PNG) and ``ledger.csv`` (one row per job).

Use::

    from gosok.launcher.ledger.db import Ledger
    from gosok.launcher.ledger.report import write_report

    with Ledger.open(path) as ledger:
        paths = write_report(ledger, "out/", project="llm", since_unix=1.7e9)
    paths["html"]

Both documents hold the programme view (totals per project x cluster, device-weighted
goodput), the job table (goodput and the parts of each job's wall time, see
``goodput.py``) and the idle spans the watchers found; a job is flagged when an idle span
on its cluster overlaps it. The HTML adds a goodput waterfall per job, a utilisation
timeline per node with idle spans shaded, and device-hours by project and cluster. Every
file is written atomically (temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .goodput import PARTS, breakdown, device_hours, programme
from .sampler import utilisation

CSV_COLUMNS = (
    "job_id",
    "project",
    "cluster",
    "gpu_type",
    "gpus",
    "wall_s",
    "gpu_hours",
    "cpu_hours",
    "goodput",
    *(f"{p}_s" for p in PARTS),
    "attempts",
    "steps",
    "tokens",
    "mfu",
    "exit_status",
    "kind",
    "nodes",
    "started_utc",
    "idle_device_s",
    "running",
)
PART_LABELS = {
    "startup": "startup",
    "productive": "productive",
    "checkpoint": "checkpoint",
    "lost_work": "lost work",
    "restart_downtime": "restart downtime",
    "idle_tail": "idle tail",
}
PART_COLOURS = {
    "startup": "#9e9e9e",
    "productive": "#2e7d32",
    "checkpoint": "#1565c0",
    "lost_work": "#c62828",
    "restart_downtime": "#ef6c00",
    "idle_tail": "#6d4c41",
}
MAX_PLOTTED_JOBS = 12
MAX_PLOTTED_NODES = 12
MAX_POINTS_PER_SERIES = 2000


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (``results.store``); reports are 0644."""
    from gosok.launcher.results.store import atomic_write_bytes

    written = atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)
    os.chmod(written, 0o644)
    return written


# ---- figures -------------------------------------------------------------------------


def goodput_text(goodput: float) -> str:
    """Goodput as the documents print it; the CSV holds the same figure as a fraction."""
    return f"{float(f'{goodput:.4f}') * 100:.2f}%"


def _utc(unix: float | None) -> str:
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m {int(seconds % 60):02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def job_rows(
    ledger: Any,
    project: str | None = None,
    since_unix: float | None = None,
    now_unix: float | None = None,
) -> list[dict[str, Any]]:
    """One dict per job: its ledger row, its breakdown parts, device-hours and the
    device-seconds of idle spans on its cluster during it."""
    now = time.time() if now_unix is None else now_unix
    spans = ledger.idle_spans(since_unix=since_unix)
    rows = []
    jobs = ledger.jobs(project=project, since_unix=since_unix)
    attempts = ledger.attempts_of(j["job_id"] for j in jobs)
    events = ledger.events_of(j["job_id"] for j in jobs)
    for job in jobs:
        b = breakdown(job, attempts[job["job_id"]], events[job["job_id"]], now)
        hours, unit = device_hours(job, b.wall_s)
        end = job["started_unix"] + b.wall_s
        idle = sum(
            _overlap(job["started_unix"], end, s["start_unix"], s["end_unix"])
            for s in spans
            if s["cluster"] == job["cluster"]
        )
        rows.append(
            dict(job)
            | b.parts()
            | {
                "wall_s": b.wall_s,
                "goodput": b.goodput,
                "device_hours": hours,
                "unit": unit,
                "attempts": b.attempts,
                "scaled": b.scaled,
                "running": b.running,
                "idle_device_s": idle,
            }
        )
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def num(value: Any, digits: int = 3) -> str:
        return "" if value is None else f"{float(value):.{digits}f}"

    for r in rows:
        gpu = r["unit"] == "GPU-hours"
        writer.writerow(
            [
                r["job_id"],
                r["project"],
                r["cluster"],
                r["gpu_type"],
                r["gpus"],
                num(r["wall_s"]),
                num(r["device_hours"], 4) if gpu else "",
                "" if gpu else num(r["device_hours"], 4),
                f"{r['goodput']:.4f}",
                *(num(r[p]) for p in PARTS),
                r["attempts"],
                "" if r["steps"] is None else r["steps"],
                "" if r["tokens"] is None else f"{float(r['tokens']):.0f}",
                num(r["mfu"], 4),
                r["exit_status"] or "",
                r["kind"],
                r["nodes"],
                _utc(r["started_unix"]),
                num(r["idle_device_s"]),
                "yes" if r["running"] else "",
            ]
        )
    return out.getvalue()


def _flags(row: Mapping[str, Any]) -> str:
    flags = []
    if row["running"]:
        flags.append("running")
    if row["exit_status"] not in (None, "", "ok", "success", "0"):
        flags.append(f"exit {row['exit_status']}")
    if row["idle_device_s"] > 0:
        flags.append(f"idle {_duration(row['idle_device_s'])} (device time) on its cluster")
    if row["scaled"]:
        flags.append("timestamps inconsistent: parts scaled")
    return "; ".join(flags)


def _tables(
    rows: Sequence[Mapping[str, Any]], spans: Sequence[Mapping[str, Any]]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, cells) for each table both documents show."""
    programme_rows = programme(rows)
    part_headers = [f"{PART_LABELS[p]} h" for p in PARTS]
    tables = [
        (
            "Programme: projects x clusters",
            ["project", "cluster", "jobs", "device-hours", "goodput", *part_headers],
            [
                [
                    g["project"],
                    g["cluster"],
                    str(g["jobs"]),
                    f"{g['device_hours']:.2f} {g['unit']}",
                    goodput_text(g["goodput"]),
                    *(f"{g[f'{p}_hours']:.2f}" for p in PARTS),
                ]
                for g in programme_rows
            ],
        ),
        (
            "Jobs",
            ["job", "project", "cluster", "devices", "wall", "device-hours", "goodput"]
            + [PART_LABELS[p] for p in PARTS]
            + ["attempts", "MFU", "exit", "flags"],
            [
                [
                    r["job_id"],
                    r["project"],
                    r["cluster"],
                    f"{r['gpus']} x {r['gpu_type'] or '?'}",
                    _duration(r["wall_s"]),
                    f"{r['device_hours']:.2f} {r['unit']}",
                    goodput_text(r["goodput"]),
                    *(_duration(r[p]) for p in PARTS),
                    str(r["attempts"]),
                    "" if r["mfu"] is None else f"{float(r['mfu']) * 100:.1f}%",
                    r["exit_status"] or "",
                    _flags(r),
                ]
                for r in rows
            ],
        ),
        (
            "Idle spans",
            ["cluster", "node", "device", "from", "to", "idle for", "mean util"],
            [
                [
                    s["cluster"],
                    s["node"],
                    s["device"] or "",
                    _utc(s["start_unix"]),
                    _utc(s["end_unix"]),
                    _duration(s["end_unix"] - s["start_unix"]),
                    "" if s["mean_util_pct"] is None else f"{s['mean_util_pct']:.1f}%",
                ]
                for s in spans
            ],
        ),
    ]
    return tables


NOTE = (
    "Goodput is the effective training time ratio (ETTR; Meta: Llama 3 paper, Kokolis et al. "
    "2025): productive step time kept / wall time from allocation to finish (queue time not "
    "counted). It equals Google's runtime goodput; MFU (program goodput) is shown beside it "
    "and scheduling goodput is not measured. Programme goodput is weighted by devices. The "
    "parts of each job add up to its wall time."
)


def _markdown(
    title: str, header: Sequence[str], tables: Sequence[tuple[str, list[str], list[list[str]]]]
) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", *header, "", NOTE, ""]
    for name, head, cells in tables:
        lines += [f"## {name}", ""]
        if not cells:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(cell(h) for h in head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in cells]
        lines.append("")
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; }
p.note { color: #555; max-width: 60em; }
"""


def _html(
    title: str,
    header: Sequence[str],
    tables: Sequence[tuple[str, list[str], list[list[str]]]],
    figures: Sequence[tuple[str, bytes]],
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f"<p>{e(line)}</p>" for line in header),
        f'<p class="note">{e(NOTE)}</p>',
    ]
    for name, head, cells in tables:
        parts.append(f"<h2>{e(name)}</h2>")
        if not cells:
            parts.append("<p>(none)</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in cells]
        parts.append("</table>")
    for caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{e(caption)}</h2>")
        parts.append(f'<img alt="{e(caption)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts)


# ---- plots ---------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=90, bbox_inches="tight")
    return out.getvalue()


def _grid(count: int, columns: int = 3) -> tuple[int, int]:
    cols = min(columns, max(count, 1))
    return math.ceil(max(count, 1) / cols), cols


def plot_waterfalls(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Per job: the wall time (100%) stepped down by each loss to what was productive."""
    from matplotlib.figure import Figure

    shown = sorted(rows, key=lambda r: -r["device_hours"])[:MAX_PLOTTED_JOBS]
    nrows, ncols = _grid(len(shown))
    figure = Figure(figsize=(4.2 * ncols, 3.0 * nrows))
    losses = [p for p in PARTS if p != "productive"]
    for index, row in enumerate(shown):
        axes = figure.add_subplot(nrows, ncols, index + 1)
        wall = row["wall_s"] or 1.0
        labels, bottoms, heights, colours = ["wall"], [0.0], [100.0], ["#424242"]
        level = 100.0
        for part in losses:
            share = 100.0 * row[part] / wall
            level -= share
            labels.append(PART_LABELS[part])
            bottoms.append(level)
            heights.append(share)
            colours.append(PART_COLOURS[part])
        labels.append("productive")
        bottoms.append(0.0)
        heights.append(100.0 * row["productive"] / wall)
        colours.append(PART_COLOURS["productive"])
        axes.bar(range(len(labels)), heights, bottom=bottoms, color=colours)
        axes.set_xticks(range(len(labels)))
        axes.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        axes.set_ylim(0, 105)
        axes.set_ylabel("% of wall time", fontsize=8)
        axes.set_title(f"{row['job_id']}: {goodput_text(row['goodput'])}", fontsize=9)
    if len(rows) > len(shown):
        figure.suptitle(f"{len(shown)} of {len(rows)} jobs, largest device-hours first")
    figure.tight_layout()
    return _png(figure)


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    step = max(1, math.ceil(len(points) / MAX_POINTS_PER_SERIES))
    return points[::step]


def plot_timelines(
    samples: Sequence[Mapping[str, Any]], spans: Sequence[Mapping[str, Any]]
) -> bytes:
    """Utilisation (GPU %, else CPU %) per node and device, idle spans shaded."""
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    nodes: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for s in samples:
        value = utilisation(s)
        if value is None:
            continue
        devices = nodes.setdefault((s["cluster"], s["node"]), {})
        devices.setdefault(s["device"] or "", []).append((s["unix"], value))
    keys = sorted(nodes)[:MAX_PLOTTED_NODES]
    nrows = max(len(keys), 1)
    figure = Figure(figsize=(10, 2.2 * nrows))

    def when(unix: float) -> datetime:
        return datetime.fromtimestamp(unix, tz=timezone.utc)

    for index, key in enumerate(keys):
        axes = figure.add_subplot(nrows, 1, index + 1)
        for device, points in sorted(nodes[key].items()):
            points = _thin(sorted(points))
            axes.plot([when(t) for t, _ in points], [v for _, v in points], lw=0.8, label=device)
        for span in spans:
            if (span["cluster"], span["node"]) == key:
                axes.axvspan(when(span["start_unix"]), when(span["end_unix"]), color="#ffcc80")
        axes.set_ylim(-2, 102)
        axes.set_ylabel("util %", fontsize=8)
        axes.set_title(f"{key[0]} / {key[1]} (idle spans shaded)", fontsize=9)
        axes.xaxis.set_major_formatter(DateFormatter("%m-%d %H:%M", tz=timezone.utc))
        axes.legend(fontsize=6, loc="upper right", ncol=4)
    figure.tight_layout()
    return _png(figure)


def plot_hours(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Device-hours by project, stacked by cluster; one panel per unit (GPU / CPU)."""
    from matplotlib.figure import Figure

    units = sorted({r["unit"] for r in rows})
    figure = Figure(figsize=(7 * len(units), 3.5))
    for index, unit in enumerate(units):
        axes = figure.add_subplot(1, len(units), index + 1)
        mine = [r for r in rows if r["unit"] == unit]
        projects = sorted({r["project"] for r in mine})
        bottom = [0.0] * len(projects)
        for cluster in sorted({r["cluster"] for r in mine}):
            hours = [
                sum(r["device_hours"] for r in mine if (r["project"], r["cluster"]) == (p, cluster))
                for p in projects
            ]
            axes.bar(projects, hours, bottom=bottom, label=cluster or "(none)")
            bottom = [b + h for b, h in zip(bottom, hours, strict=True)]
        axes.set_ylabel(unit)
        axes.set_title(f"{unit} by project and cluster", fontsize=9)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return _png(figure)


# ---- the report ----------------------------------------------------------------------


def write_report(
    ledger: Any,
    out_dir: str | os.PathLike[str],
    project: str | None = None,
    since_unix: float | None = None,
    now_unix: float | None = None,
) -> dict[str, Path]:
    """Write ``ledger.md``, ``ledger.html`` and ``ledger.csv`` into ``out_dir`` (created);
    returns ``{"md": ..., "html": ..., "csv": ...}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = time.time() if now_unix is None else now_unix
    rows = job_rows(ledger, project, since_unix, now)
    clusters = {r["cluster"] for r in rows} if project is not None else None
    spans = [
        s
        for s in ledger.idle_spans(since_unix=since_unix)
        if clusters is None or s["cluster"] in clusters
    ]
    samples = [
        s
        for s in ledger.samples(since_unix=since_unix)
        if clusters is None or s["cluster"] in clusters
    ]

    title = "Goodput ledger"
    header = [
        f"Ledger: {ledger.path}",
        f"Generated {_utc(now)}; project: {project or 'all'}; "
        f"since: {_utc(since_unix) if since_unix is not None else 'the beginning'}; "
        f"{len(rows)} jobs, {len(spans)} idle spans, {len(samples)} samples.",
    ]
    tables = _tables(rows, spans)
    figures = []
    if rows:
        figures.append(("Goodput waterfall per job", plot_waterfalls(rows)))
    if samples:
        figures.append(("Utilisation per node", plot_timelines(samples, spans)))
    if rows:
        figures.append(("Device-hours by project and cluster", plot_hours(rows)))

    return {
        "md": write_atomic(out / "ledger.md", _markdown(title, header, tables)),
        "html": write_atomic(out / "ledger.html", _html(title, header, tables, figures)),
        "csv": write_atomic(out / "ledger.csv", _csv_text(rows)),
    }


# ---- the programme -------------------------------------------------------------------

PROGRAMME_CSV = (
    "provider", "cluster", "gpu_type", "project", "unit", "allocations", "gpus_now",
    "allocated_hours", "used_hours", "productive_hours", "idle_hours", "overhead_hours",
    "low_util_hours", "outside_hours", "gap_hours", "use", "goodput",
)  # fmt: skip
STATE_COLOURS = {"productive": "#2e7d32", "overhead": "#ef6c00", "idle": "#c62828"}


def plot_programme(groups: Sequence[Mapping[str, Any]]) -> bytes:
    """Allocated hours per group as productive + overhead + idle, largest gap on top."""
    from matplotlib.figure import Figure

    shown = list(groups)[:MAX_PLOTTED_JOBS][::-1]
    figure = Figure(figsize=(8, 1.0 + 0.45 * len(shown)))
    axes = figure.add_subplot(1, 1, 1)
    names = [f"{g['provider'] or '-'} / {g['cluster']} / {g['gpu_type']} / {g['project']}"
             for g in shown]  # fmt: skip
    left = [0.0] * len(shown)
    for state, colour in STATE_COLOURS.items():
        hours = [g[f"{state}_hours"] for g in shown]
        axes.barh(names, hours, left=left, color=colour, label=state)
        left = [a + b for a, b in zip(left, hours, strict=True)]
    axes.set_xlabel("device-hours (allocated = productive + overhead + idle)")
    axes.legend(fontsize=7, loc="lower right")
    axes.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    return _png(figure)


def programme_of(
    ledger: Any,
    now_unix: float,
    stretch_s: float = 3600.0,
    idle_below: float = 5.0,
    jobs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``programme.programme_view`` of everything in ``ledger`` up to ``now_unix``."""
    from .programme import programme_view
    from .sampler import busy_intervals

    return programme_view(
        ledger.allocations(),
        job_rows(ledger, now_unix=now_unix) if jobs is None else jobs,
        ledger.idle_spans(),
        now_unix,
        stretch_s,
        watched=[
            *(
                (b["cluster"], b["node"], b["device"], b["start_unix"], b["end_unix"])
                for b in ledger.busy_spans()
            ),
            *busy_intervals(ledger.watcher_samples(), idle_below),
        ],  # fmt: skip
    )


def plot_programme_timelines(groups: Sequence[Mapping[str, Any]], stretch_s: float) -> bytes:
    """GPUs used over time against GPUs allocated, per allocation of the groups with the
    largest gaps; idle stretches shaded."""
    from matplotlib.figure import Figure

    shown = [(g, t) for g in groups for t in g["timelines"] if t["pieces"]][:MAX_PLOTTED_NODES]
    rows, cols = _grid(len(shown), columns=2)
    figure = Figure(figsize=(6 * cols, 2.4 * rows))
    for index, (group, timeline) in enumerate(shown):
        axes = figure.add_subplot(rows, cols, index + 1)
        xs, ys = [], []
        for a, b, used in timeline["pieces"]:
            xs += [datetime.fromtimestamp(a, timezone.utc), datetime.fromtimestamp(b, timezone.utc)]
            ys += [used, used]
        axes.fill_between(xs, ys, step=None, color=STATE_COLOURS["productive"], alpha=0.5,
                          label="used")  # fmt: skip
        axes.axhline(timeline["gpus"], color="#333", linewidth=1, label="allocated")
        for a, b in timeline["quiet"]:
            if b - a >= stretch_s:
                axes.axvspan(datetime.fromtimestamp(a, timezone.utc),
                             datetime.fromtimestamp(b, timezone.utc),
                             color=STATE_COLOURS["idle"], alpha=0.25)  # fmt: skip
        axes.set_ylim(0, timeline["gpus"] * 1.1)
        axes.set_title(f"{group['cluster']} / {group['project']} ({group['provider'] or '-'})",
                       fontsize=8)  # fmt: skip
        axes.tick_params(labelsize=6)
        axes.set_ylabel("GPUs", fontsize=7)
        if index == 0:
            axes.legend(fontsize=6, loc="upper right")
    figure.autofmt_xdate()
    figure.tight_layout()
    return _png(figure)


def write_programme(
    ledger: Any,
    out_dir: str | os.PathLike[str],
    now_unix: float | None = None,
    stretch_s: float = 3600.0,
    idle_below: float = 5.0,
) -> tuple[dict[str, Path], dict[str, list[dict[str, Any]]]]:
    """Write ``programme.md``, ``programme.html`` and ``programme.csv`` (see
    ``programme.py``); returns the paths and the view they show."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = time.time() if now_unix is None else now_unix
    view = programme_of(ledger, now, stretch_s, idle_below)
    groups, stretches = view["groups"], view["stretches"]

    def h(value: float) -> str:
        return f"{value:.2f}"

    group_cells = [
        [g["provider"] or "-", g["cluster"], g["gpu_type"], g["project"],
         *(h(g[f"{s}_hours"]) for s in ("allocated", "used", "productive", "idle", "gap")),
         f"{100 * g['use']:.1f}%", g["unit"]]
        for g in groups
    ]  # fmt: skip
    stretch_cells = [
        [s["provider"] or "-", s["cluster"], s["project"], str(s["gpus"]), _utc(s["start_unix"]),
         _utc(s["end_unix"]), _duration(s["end_unix"] - s["start_unix"]), h(s["gpu_hours"])]
        for s in stretches
    ]  # fmt: skip
    tables = [
        ("Allocations by provider, cluster, GPU type and project (largest gap first)",
         ["provider", "cluster", "GPU type", "project", "allocated", "used", "productive",
          "idle", "gap", "used share", "unit"], group_cells),
        (f"IDLE STRETCHES: allocated, nothing running, {_duration(stretch_s)} or longer",
         ["provider", "cluster", "project", "GPUs", "from", "to", "length", "device-hours"],
         stretch_cells),
    ]  # fmt: skip
    header = [
        f"Ledger: {ledger.path}",
        f"Generated {_utc(now)}; {len(groups)} groups, {len(stretches)} idle stretches. "
        "allocated = productive + overhead + idle; idle = allocated with nothing running, "
        "plus utilisation below the idle rule while jobs ran; used counts what the node "
        "watchers saw busy beyond the gosok jobs (work run without gosok).",
    ]
    figures = []
    if groups:
        figures.append(("Where the allocated hours went", plot_programme(groups)))
        figures.append(
            ("GPUs used against allocated over time (idle stretches shaded)",
             plot_programme_timelines(groups, stretch_s))
        )  # fmt: skip
    out_csv = io.StringIO()
    writer = csv.writer(out_csv)
    writer.writerow(PROGRAMME_CSV)
    for g in groups:
        writer.writerow([f"{g[c]:.6g}" if isinstance(g[c], float) else g[c] for c in PROGRAMME_CSV])
    title = "Programme ledger"
    paths = {
        "md": write_atomic(out / "programme.md", _markdown(title, header, tables)),
        "html": write_atomic(out / "programme.html", _html(title, header, tables, figures)),
        "csv": write_atomic(out / "programme.csv", out_csv.getvalue()),
    }
    return paths, view
