"""Reports derived from a suite results file: terminal summary, Markdown, HTML, PNG plots.

Everything here reads the sealed ``results.json`` and nothing else, so a report can be
re-made at any time (``gosok report results.json --out-dir DIR``). The HTML report is
self-contained: inline CSS and the plots embedded as base64 PNGs, no network needed.

Plots: bus bandwidth vs size per collective phase, GEMM TFLOPS per GPU against the spec
line, and a per-node heatmap of the key figures relative to the cluster median.

``render_suite`` and ``compare_suite`` are the suite's ``render`` / ``compare`` hooks; both
work on the re-derived document (checks and verdicts recomputed from the measurements, see
``suite.derive``), never on the stored verdicts.
Use: ``write_reports(doc, run_dir)``; ``print_summary(doc, console)``;
``gosok report compare A.json B.json [--tolerance 0.05] [--out diff.md]``.
"""

from __future__ import annotations

import argparse
import base64
import html
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from gosok.benchmarks.core.compare import print_rows
from gosok.benchmarks.suite.compare import compare_docs, rederived, regressions
from gosok.benchmarks.suite.verdicts import FAIL, PASS, WARN, check_from_dict
from gosok.launcher.results.store import atomic_write_bytes

STYLE = {PASS: "green", WARN: "yellow", FAIL: "bold red", "INFO": "dim"}
HTML_COLOURS = {PASS: "#1b7f3b", WARN: "#b58900", FAIL: "#c0392b", "INFO": "#777"}


def _checks(doc: dict[str, Any]):
    return [check_from_dict(c) for c in doc.get("checks", [])]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "-" if value is None else str(value)


def _node_label(doc: dict[str, Any], node_rank: int) -> str:
    node = doc["nodes"][node_rank]
    return f"node {node_rank} ({node['node_id'][:12]} @ {node['ip']})"


def headline(doc: dict[str, Any]) -> list[str]:
    """The few lines a reader needs first: verdict, culprits, capacity, time."""
    verdict = doc["verdict"]
    cluster = doc["config"]["cluster"]
    lines = [
        f"suite {doc['suite']['name']} on {cluster['name']} ({len(doc['nodes'])} nodes x "
        f"{cluster['gpus_per_node']} {doc['gpu']['name']}), contract {doc['contract']['name']}",
        f"cluster verdict: {verdict['cluster']}",
    ]
    if verdict["failing_nodes"]:
        names = ", ".join(_node_label(doc, n["node_rank"]) for n in verdict["failing_nodes"])
        lines.append(f"failing node(s): {names}")
    else:
        lines.append("failing node(s): none")
    isolation = doc["phases"].get("isolation", {})
    outcome = isolation.get("outcome")
    if outcome:
        lines.append(
            f"isolation ({outcome['mode']}, {outcome['round_count']} round(s), budget "
            f"{outcome['round_budget']}): culprits {outcome['culprits'] or 'none'}, "
            f"bad links {outcome['bad_links'] or 'none'}"
        )
    cap = doc.get("capacity", {})
    if cap:
        measured = cap.get("measured_b200_eq")
        lines.append(
            f"capacity: nominal {cap['nominal_b200_eq']:.4g} B200-eq ({cap['nominal_basis']}), "
            f"measured {_fmt(measured)} B200-eq"
            + (" (CPU estimate basis)" if cap.get("estimate_only") else "")
        )
    total = sum(doc.get("timing_seconds", {}).values())
    lines.append(
        "time: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in doc.get("timing_seconds", {}).items())
        + f"; total {total:.1f}s"
    )
    return lines


def summary_lines(doc: dict[str, Any], width: int = 80) -> list[str]:
    """A summary that reads in an 80-column terminal: check counts per phase, then one
    line per failing or warning check name (how many subjects, which, the worst value
    against its expectation); every check with its rule is in report.md / report.html."""
    checks = [c for c in _checks(doc) if c.status != "INFO"]
    phases: dict[str, dict[str, int]] = {}
    flagged: dict[tuple[str, str], list[Any]] = {}
    for c in checks:
        counts = phases.setdefault(c.phase, {PASS: 0, WARN: 0, FAIL: 0})
        counts[c.status] = counts.get(c.status, 0) + 1
        if c.status in (WARN, FAIL):
            flagged.setdefault((c.status, f"{c.phase}.{c.name}"), []).append(c)
    lines = [f"suite {doc['suite']['name']}: {len(checks)} checks"]
    for phase, counts in phases.items():
        lines.append(
            f"  {phase:<11s} {counts[PASS]:4d} PASS {counts[WARN]:4d} WARN {counts[FAIL]:4d} FAIL"
        )
    for (status, name), group in sorted(flagged.items(), key=lambda kv: kv[0][0] != FAIL):
        subjects = ", ".join(c.subject for c in group[:3]) + (", ..." if len(group) > 3 else "")
        numeric = [c for c in group if isinstance(c.value, int | float)]
        worst = min(numeric, key=lambda c: c.value) if numeric else group[0]
        unit = f" {worst.unit}" if worst.unit and worst in numeric else ""
        lines.append(f"{status} {name}: {len(group)} x ({subjects})")
        lines.append(f"     worst {_fmt(worst.value)}{unit}; expected {worst.expectation}")
    # Long lines wrap at spaces, never inside a number or a name.
    return [
        part
        for line in lines
        for part in textwrap.wrap(
            line, width - 1, subsequent_indent="       ", break_long_words=False,
            break_on_hyphens=False, drop_whitespace=True,
        ) or [line]
    ]  # fmt: skip


def print_summary(doc: dict[str, Any], console: Console) -> None:
    """The compact summary (``summary_lines``), then the headline."""
    for line in summary_lines(doc):
        style = STYLE.get(line.split(" ", 1)[0], "")
        console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)
    console.print("every check with its rule: report.md / report.html", highlight=False)
    for line in headline(doc):
        style = STYLE.get(doc["verdict"]["cluster"], "") if line.startswith("cluster") else ""
        console.print(f"[{style}]{line}[/]" if style else line, highlight=False)


# --- plots ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _busbw_series(records: list[dict[str, Any]]) -> dict[tuple[int, str], list[tuple[int, float]]]:
    samples: dict[tuple[int, str, int], list[float]] = defaultdict(list)
    for r in records:
        samples[(r["group"], r["op"], r["size_bytes"])].append(r["busbw_gbps"])
    series: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    for (group, op, size), values in sorted(samples.items()):
        series[(group, op)].append((size, statistics.median(values)))
    return series


def plot_busbw(doc: dict[str, Any], path: Path) -> Path | None:
    phases = [p for p in ("intra_node", "inter_node") if doc["phases"].get(p, {}).get("records")]
    if not phases:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.5), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        series = _busbw_series(doc["phases"][phase]["records"])
        groups = sorted({g for g, _ in series})
        for (group, op), points in sorted(series.items()):
            label = f"node {group} {op}" if phase == "intra_node" else op
            if phase == "intra_node" and len(groups) > 16:
                label = None
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("bus bandwidth (GB/s), median of repeats")
        ax.set_title(f"{phase}: busbw vs size")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_gemm(doc: dict[str, Any], path: Path) -> Path | None:
    ranks = doc["phases"].get("compute", {}).get("ranks", [])
    if not ranks:
        return None
    plt = _pyplot()
    dtypes = sorted({d for r in ranks for d in r["gemm"]})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    gpu = doc["gpu"]
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        rows = [r for r in ranks if dtype in r["gemm"]]
        values = [r["gemm"][dtype]["tflops"] for r in rows]
        labels = [f"{r['node_rank']}.{r['local_rank']}" for r in rows]
        ax.bar(range(len(values)), values, color="#4c72b0")
        spec = gpu.get(f"{dtype}_tflops")
        if spec:
            estimate = " (estimate)" if gpu.get("status") != "shipping" else ""
            ax.axhline(spec, color="#c0392b", ls="--", label=f"dense spec {spec:g}{estimate}")
            if spec > 20 * max(values):
                ax.set_yscale("log")
        median = statistics.median(values)
        ax.axhline(median, color="#555", ls=":", label=f"median {median:.4g}")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels if len(labels) <= 64 else [""] * len(labels), fontsize=7)
        ax.set_xlabel("GPU (node.local_rank)")
        ax.set_ylabel("TFLOPS")
        ax.set_title(f"{dtype.upper()} GEMM per GPU")
        ax.legend(fontsize=7)
    return _save(fig, path)


def heatmap_matrix(doc: dict[str, Any]) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Rows: nodes; columns: key figures; values: node figure / cluster median."""
    phases = doc["phases"]
    per_node: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in phases.get("compute", {}).get("ranks", []):
        for dtype, g in row["gemm"].items():
            per_node[row["node_rank"]][f"{dtype} GEMM"].append(g["tflops"])
        if row.get("hbm"):
            per_node[row["node_rank"]]["HBM"].append(row["hbm"]["gbps"])
    for row in phases.get("intra_node", {}).get("per_node", []):
        per_node[row["node_rank"]]["intra busbw"].append(row["busbw_gbps"])
    columns = sorted({c for figures in per_node.values() for c in figures})
    nodes = sorted(per_node)
    medians = {
        c: statistics.median(statistics.median(per_node[n][c]) for n in nodes if per_node[n][c])
        for c in columns
    }
    matrix = [
        [
            statistics.median(per_node[n][c]) / medians[c]
            if per_node[n][c] and medians[c]
            else None
            for c in columns
        ]
        for n in nodes
    ]
    return [f"node {n}" for n in nodes], columns, matrix


def plot_heatmap(doc: dict[str, Any], path: Path) -> Path | None:
    rows, columns, matrix = heatmap_matrix(doc)
    if not rows or not columns:
        return None
    import numpy as np

    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix])
    fig, ax = plt.subplots(figsize=(2 + 1.4 * len(columns), 1.5 + min(0.35 * len(rows), 12)))
    image = ax.imshow(data, cmap="RdYlGn", vmin=0.5, vmax=1.1, aspect="auto")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize=8)
    if len(rows) <= 64:
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=8)
    if len(rows) <= 32:
        for i in range(len(rows)):
            for j in range(len(columns)):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("per node, relative to the cluster median")
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def write_plots(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "busbw": plot_busbw(doc, out_dir / "suite_busbw.png"),
        "gemm": plot_gemm(doc, out_dir / "suite_gemm.png"),
        "heatmap": plot_heatmap(doc, out_dir / "suite_heatmap.png"),
    }
    return {k: v for k, v in made.items() if v is not None}


# --- Markdown and HTML ---------------------------------------------------------------------

PLOT_TITLES = {
    "busbw": "Bus bandwidth vs message size",
    "gemm": "GEMM TFLOPS per GPU against the spec line",
    "heatmap": "Per-node key figures (1.0 = cluster median)",
}


def _check_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for c in _checks(doc):
        unit = f" {c.unit}" if c.unit and isinstance(c.value, (int, float)) else ""
        rows.append(
            [
                c.status,
                c.subject,
                f"{c.phase}.{c.name}",
                f"{_fmt(c.value)}{unit}",
                c.expectation,
                c.rule,
                c.detail,
            ]
        )
    return rows


def _inventory_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for facts in doc["phases"].get("inventory", {}).get("nodes", []):
        gpus = facts.get("gpu_details") or []
        model = ", ".join(sorted({g["name"] for g in gpus})) or f"CPU: {facts.get('cpu_model')}"
        memory = facts.get("memory_bytes")
        rows.append(
            [
                str(facts["node_rank"]),
                facts.get("hostname", ""),
                model,
                str(len(gpus) if gpus else facts.get("local_world_size")),
                f"{memory / 2**30:.1f} GiB" if memory else "-",
                str(facts.get("driver")),
                str(facts.get("cuda")),
                str(facts.get("nccl")),
                str(facts.get("torch")),
            ]
        )
    return rows


INVENTORY_HEAD = [
    "node",
    "host",
    "model",
    "count",
    "host memory",
    "driver",
    "CUDA",
    "NCCL",
    "torch",
]
CHECK_HEAD = ["status", "subject", "check", "value", "expectation", "rule", "detail"]


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _isolation_lines(doc: dict[str, Any]) -> list[str]:
    isolation = doc["phases"].get("isolation")
    if not isolation:
        return ["isolation phase not in this suite"]
    if not isolation.get("triggered"):
        return ["not triggered: no check failed and no node was an outlier"]
    outcome = isolation["outcome"]
    lines = [
        f"triggered by: {'; '.join(isolation['reasons'][:5])}",
        f"mode {outcome['mode']}, groups of {outcome['group_size']}, {outcome['round_count']} "
        f"round(s) (budget {outcome['round_budget']}), {outcome['measurements']} group "
        f"measurement(s), reference {outcome['reference']:.4g} GB/s, slow below "
        f"{1 - outcome['slow_below']:.2f} x reference",
        f"culprits: {outcome['culprits'] or 'none'}; bad links: {outcome['bad_links'] or 'none'}",
    ]
    for node, evidence in outcome["evidence"].items():
        lines.append(f"evidence for node {node}: " + "; ".join(evidence))
    lines += outcome.get("notes", [])
    return lines


def render_markdown(doc: dict[str, Any], plots: dict[str, Path]) -> str:
    cap = doc.get("capacity", {})
    parts = [
        f"# Acceptance report: suite `{doc['suite']['name']}`",
        "",
        *[f"- {line}" for line in headline(doc)],
        f"- results: sha256 `{doc['sha256']}` (verify with `gosok report verify`)",
        "",
        "## Checks",
        "",
        _md_table(CHECK_HEAD, _check_rows(doc)),
        "",
        "## Isolation",
        "",
        *[f"- {line}" for line in _isolation_lines(doc)],
        "",
        "## Inventory",
        "",
        _md_table(INVENTORY_HEAD, _inventory_rows(doc)),
        "",
        "## Capacity (B200-equivalents)",
        "",
        _md_table(
            ["figure", "value", "basis"],
            [
                ["nominal", _fmt(cap.get("nominal_b200_eq")), str(cap.get("nominal_basis"))],
                ["measured", _fmt(cap.get("measured_b200_eq")), str(cap.get("measured_basis"))],
                ["delivered / nominal", _fmt(cap.get("delivered_fraction")), ""],
            ],
        ),
        "",
        "## Plots",
        "",
    ]
    for key, path in plots.items():
        parts += [f"### {PLOT_TITLES[key]}", "", f"![{PLOT_TITLES[key]}]({path.name})", ""]
    env = doc["env"]["driver"]
    parts += [
        "## Environment",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, NCCL {env.get('nccl')}, "
        f"ray {env.get('ray')}, python {env.get('python')}; schema {doc['schema']}",
        "",
    ]
    return "\n".join(parts)


def _html_table(head: list[str], rows: list[list[str]], status_col: int | None = None) -> str:
    out = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in head], "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = html.escape(str(cell))
            if i == status_col:
                colour = HTML_COLOURS.get(cell, "#333")
                text = f'<b style="color:{colour}">{text}</b>'
            cells.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(doc: dict[str, Any], plots: dict[str, Path]) -> str:
    verdict = doc["verdict"]["cluster"]
    images = []
    for key, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(
            f"<h3>{html.escape(PLOT_TITLES[key])}</h3>"
            f'<img alt="{html.escape(PLOT_TITLES[key])}" src="data:image/png;base64,{data}">'
        )
    head_lines = "".join(f"<li>{html.escape(line)}</li>" for line in headline(doc))
    isolation = "".join(f"<li>{html.escape(line)}</li>" for line in _isolation_lines(doc))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>gosok suite {html.escape(doc["suite"]["name"])}: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
.verdict {{ font-size: 1.6em; font-weight: bold; color: {HTML_COLOURS.get(verdict, "#333")}; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
code {{ font-size: 11px; }}
</style></head><body>
<h1>Acceptance report: suite {html.escape(doc["suite"]["name"])}</h1>
<p class="verdict">{verdict}</p>
<ul>{head_lines}</ul>
<p>results sha256 <code>{doc["sha256"]}</code></p>
<h2>Checks</h2>
{_html_table(CHECK_HEAD, _check_rows(doc), status_col=0)}
<h2>Isolation</h2><ul>{isolation}</ul>
<h2>Inventory</h2>
{_html_table(INVENTORY_HEAD, _inventory_rows(doc))}
<h2>Plots</h2>
{"".join(images)}
</body></html>
"""


def exclude_list(doc: dict[str, Any]) -> str:
    """The hostnames of the nodes the verdict condemns, one per line: Slurm's exclude list
    (``sbatch --exclude=$(paste -sd, exclude.txt)``, or ``cluster.exclude_file=``)."""
    hosts = sorted({str(n.get("hostname") or "") for n in doc["verdict"]["failing_nodes"]} - {""})
    return "".join(f"{host}\n" for host in hosts)


def write_reports(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """report.md, report.html, the PNG plots and exclude.txt, all derived from ``doc``."""
    out = Path(out_dir)
    plots = write_plots(doc, out)
    md = atomic_write_bytes(out / "report.md", render_markdown(doc, plots).encode())
    page = atomic_write_bytes(out / "report.html", render_html(doc, plots).encode())
    exclude = atomic_write_bytes(out / "exclude.txt", exclude_list(doc).encode())
    return [md, page, exclude, *plots.values()]


def render_suite(doc: dict[str, Any], args: argparse.Namespace) -> int:
    doc = rederived(doc)
    console = Console(highlight=False, soft_wrap=True)
    print_summary(doc, console)
    if getattr(args, "out_dir", None):
        for path in write_reports(doc, args.out_dir):
            console.print(f"report: {path}")
    return 0


def render_comparison(a: dict[str, Any], b: dict[str, Any], rows: list[Any], tol: float) -> str:
    lines = [
        f"# Suite comparison (regression: a drop of more than {tol:.0%})",
        "",
        f"- baseline: {a['suite']['name']} on {a['config']['cluster']['name']}, "
        f"sha256 {a['sha256'][:16]}",
        f"- candidate: {b['suite']['name']} on {b['config']['cluster']['name']}, "
        f"sha256 {b['sha256'][:16]}",
        f"- regressions: {len(regressions(rows))}",
        "",
    ]
    table = [
        [
            r.status,
            r.scope,
            r.figure,
            _fmt(r.baseline),
            _fmt(r.candidate),
            f"{r.change:+.1%}" if r.change is not None else "",
            r.unit,
        ]
        for r in rows
    ]
    lines.append(
        _md_table(["status", "scope", "figure", "baseline", "candidate", "change", "unit"], table)
    )
    return "\n".join(lines) + "\n"


def compare_suite(a: dict[str, Any], b: dict[str, Any], args: argparse.Namespace) -> int:
    a, b = rederived(a), rederived(b)
    rows = compare_docs(a, b, args.tolerance)
    code = print_rows(rows, f"suite comparison (regression: drop > {args.tolerance:.0%})")
    if args.out:
        atomic_write_bytes(args.out, render_comparison(a, b, rows, args.tolerance).encode())
        print(f"comparison: {args.out}")
    return code
