"""The cross-provider audit view: many results files, one page per audit, grouped by GPU type.

``gosok report audit FILES... --out-dir DIR [--public-key PUB ...] [--nonce N ...]`` reads
results files from several providers, clusters, GPU types and dates (suite results mainly;
``gemm`` and ``collectives`` files get the figures they have) and writes:

- ``audit.md`` and a self-contained ``audit.html`` (inline CSS, plots as base64 PNG): the
  trust of every file (seal, signature, nonce, figures re-derived from raw data), then one
  section per GPU type with its clusters side by side: delivered vs contracted (FP8 / BF16
  GEMM and HBM as % of spec, intra- and inter-node bus bandwidth), B200-equivalents nominal
  vs measured, the re-derived verdict (and the stored one when it differs) and the date;
- ``audit.csv``: one row per file with the same figures;
- ``audit_<gpu>.png``: the plot of each GPU type's section.

Every figure comes from the re-derived document (``rederive``), never from a stored
verdict. Different GPU types are never put side by side: each has its own section.

Use: ``write_audit(assessments, out_dir)`` with ``trust.assess(...)`` results.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gosok.benchmarks.report.trust import OK, Assessment, printable
from gosok.launcher.results.store import atomic_write_bytes

METRICS = (
    ("gemm_fp8_tflops", "FP8 GEMM", "median per GPU"),
    ("gemm_bf16_tflops", "BF16 GEMM", "median per GPU"),
    ("hbm_gbps", "HBM bandwidth", "median per GPU"),
    ("intra_node_busbw_gbps", "intra-node busbw", "median per node"),
    ("inter_node_busbw_gbps", "inter-node busbw", "whole allocation"),
)
COLOURS = {"PASS": "#1b7f3b", "OK": "#1b7f3b", "WARN": "#b58900", "FAIL": "#c0392b"}
SEVERITY = {"PASS": 1, "INFO": 0, "WARN": 2, "FAIL": 3}


@dataclass
class MetricCell:
    """One delivered figure and what was contracted for it."""

    value: float | None
    unit: str
    pct_of_spec: float | None
    floor: str
    status: str | None
    floor_pct: float | None = None  # the contracted floor as % of spec, when it is one
    judged: int = 0  # checks of this metric (floors and outliers) with that worst status

    def text(self) -> str:
        if self.value is None:
            return "-"
        pct = f", {self.pct_of_spec:.1f}% of spec" if self.pct_of_spec is not None else ""
        status = ""
        if self.status:
            status = f" {self.status}"
            if self.status in ("WARN", "FAIL"):
                status += f" ({self.judged} check(s))"
        return f"{self.value:.4g} {self.unit}{pct} (contract: {self.floor}){status}"


@dataclass
class AuditRow:
    """Everything the audit says about one results file."""

    path: str
    kind: str
    provider: str
    cluster: str
    gpu_key: str
    gpu_name: str
    nodes: int | None
    gpus_per_node: int | None
    started_unix: float | None
    contract: str
    metrics: dict[str, MetricCell]
    nominal_b200_eq: float | None
    measured_b200_eq: float | None
    delivered_fraction: float | None
    verdict: str
    stored_verdict: str
    seal: str
    signature: str
    signer: str
    nonce: str
    figures: str
    sha256: str
    passed: bool
    notes: list[str] = field(default_factory=list)
    #: The outcome of the auditor's spot checks of this file ("-" when none was given).
    spotcheck: str = "-"
    #: For a spot check's own row: the sha256 of the claims file it checked.
    claims_sha256: str = ""

    @property
    def date(self) -> str:
        if self.started_unix is None:
            return "unknown"
        when = datetime.fromtimestamp(self.started_unix, tz=UTC)
        return when.strftime("%Y-%m-%d %H:%M")

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.cluster} {self.date}"


def _str(value: Any, default: str = "?") -> str:
    return value if isinstance(value, str) and value else default


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _worst(statuses: list[str]) -> str | None:
    return max(statuses, key=lambda s: SEVERITY.get(s, 0)) if statuses else None


def _floor_text(expectation: Any, spec: float | None, unit: str) -> str:
    if expectation is None:
        return "no floor"
    if expectation.fraction_of_spec is not None and spec:
        return f">= {expectation.fraction_of_spec:.0%} of spec"
    if expectation.absolute is not None:
        return f">= {expectation.absolute:g} {unit}"
    return "no floor"


def _suite_metrics(doc: dict[str, Any]) -> dict[str, MetricCell]:
    from gosok.benchmarks.suite.derive import contract_from_dict, gpu_from_dict
    from gosok.benchmarks.suite.verdicts import UNITS, resolve_expectations, spec_value

    gpu, contract = gpu_from_dict(doc["gpu"]), contract_from_dict(doc["contract"])
    expectations = resolve_expectations(contract, gpu.key)
    phases = doc["phases"]
    ranks = phases.get("compute", {}).get("ranks", [])
    values = {
        "gemm_fp8_tflops": _median(
            [r["gemm"]["fp8"]["tflops"] for r in ranks if "fp8" in r["gemm"]]
        ),
        "gemm_bf16_tflops": _median(
            [r["gemm"]["bf16"]["tflops"] for r in ranks if "bf16" in r["gemm"]]
        ),
        "hbm_gbps": _median([r["hbm"]["gbps"] for r in ranks if r.get("hbm")]),
        "intra_node_busbw_gbps": _median(
            [n["busbw_gbps"] for n in phases.get("intra_node", {}).get("per_node", [])]
        ),
        "inter_node_busbw_gbps": phases.get("inter_node", {}).get("busbw_gbps"),
    }
    cells = {}
    for metric, _, _ in METRICS:
        spec, _ = spec_value(metric, gpu)
        value = values[metric]
        statuses = [
            c["status"]
            for c in doc["checks"]
            if c["name"] in (metric, f"{metric}.outlier") and c["status"] != "INFO"
        ]
        expectation = expectations.get(metric)
        worst = _worst(statuses)
        cells[metric] = MetricCell(
            value,
            UNITS[metric],
            100.0 * value / spec if value is not None and spec else None,
            _floor_text(expectation, spec, UNITS[metric]),
            worst,
            100.0 * expectation.fraction_of_spec
            if expectation is not None and expectation.fraction_of_spec is not None and spec
            else None,
            statuses.count(worst) if worst else 0,
        )
    return cells


def _gemm_metrics(doc: dict[str, Any]) -> dict[str, MetricCell]:
    measured = [r for r in doc["records"] if not r.get("skipped")]
    floor = doc["config"]["bench"].get("min_pct_of_peak") or 0
    families = {
        "gemm_fp8_tflops": [r for r in measured if r["entry"].startswith("gemm_fp8")],
        "gemm_bf16_tflops": [r for r in measured if r["entry"] == "gemm_bf16"],
        "hbm_gbps": [r for r in measured if r["family"] == "hbm"],
    }
    cells = {}
    for metric, records in families.items():
        key, unit = ("gbps", "GB/s") if metric == "hbm_gbps" else ("tflops", "TFLOPS")
        pcts = [r["pct_of_peak"] for r in records if r.get("pct_of_peak") is not None]
        failed = sum(1 for r in records if not r["passed"])
        cells[metric] = MetricCell(
            _median([r[key] for r in records]),
            unit,
            _median(pcts),
            f">= {floor:g}% of peak" if floor else "no floor",
            ("FAIL" if failed else "PASS") if records else None,
            float(floor) if floor else None,
            failed,
        )
    return cells


def audit_row(assessment: Assessment) -> AuditRow:
    """The audit's view of one assessed file, from its re-derived document."""
    doc, original = assessment.rederived.doc, assessment.doc
    assert doc is not None
    kind = doc["kind"]
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    cluster = config.get("cluster") if isinstance(config.get("cluster"), dict) else {}
    metrics: dict[str, MetricCell] = {}
    capacity: dict[str, Any] = {}
    notes = list(assessment.rederived.notes)
    for name in ("reference", "identity"):
        aspect = assessment.aspect(name)
        if aspect is not None and aspect.status == "FAIL":
            notes += [f"{name} FAIL: {aspect.detail}", *(f"{name}: {m}" for m in aspect.more)]
    gpu_key, gpu_name, contract = _str(cluster.get("gpu")), _str(cluster.get("gpu")), "-"
    claims_sha256 = ""
    if kind == "spotcheck":
        spot = doc["spotcheck"]
        claims_sha256 = _str(spot["claims"].get("sha256"), "")
        gpu_key = _str(spot["claims"].get("gpu"))
        gpu_name = _catalogue_name(gpu_key)
        contract = _str(spot.get("contract"))
        verdict = doc["verdict"]["spotcheck"]
        stored = original.get("verdict")
        stored_verdict = stored.get("spotcheck") if isinstance(stored, dict) else None
        notes.append(
            f"spot check of {spot['claims'].get('path')} (sha256 {claims_sha256[:12]}): "
            f"{len(spot['drawn'])} of {spot['claims'].get('nodes')} nodes, {verdict}"
            + "".join(f"; {c['subject']} {c['name']}: {c['detail']}" for c in doc["checks"]
                      if c["status"] == "FAIL")
        )  # fmt: skip
    elif kind == "suite":
        metrics = _suite_metrics(doc)
        capacity = doc.get("capacity") or {}
        gpu_key, gpu_name = doc["gpu"]["key"], doc["gpu"]["name"]
        contract = _str(doc["contract"].get("name"))
        verdict = doc["verdict"]["cluster"]
        stored = original.get("verdict")
        stored_verdict = stored.get("cluster") if isinstance(stored, dict) else None
    else:
        summary = doc.get("summary") or {}
        verdict = "PASS" if summary.get("passed") else "FAIL"
        old = original.get("summary")
        stored_verdict = (
            ("PASS" if old.get("passed") else "FAIL") if isinstance(old, dict) else None
        )
        if kind == "gemm":
            metrics = _gemm_metrics(doc)
            gpu_key, gpu_name = doc["peak"]["gpu"], doc["peak"]["name"]
        elif kind == "collectives":
            gpu_name = _catalogue_name(gpu_key)
            averages = summary.get("avg_busbw_gbps") or {}
            notes.append(
                "collectives sweep, average busbw: "
                + ", ".join(f"{k} {v:.4g} GB/s" for k, v in averages.items())
            )
    signature = assessment.aspect("signature")
    nonce = assessment.aspect("nonce")
    figures = assessment.aspect("figures")
    seal = assessment.aspect("seal")
    started = original.get("started_unix", original.get("created_unix"))
    return AuditRow(
        path=assessment.path,
        kind=kind,
        provider=_str(cluster.get("provider")),
        cluster=_str(cluster.get("name")),
        gpu_key=gpu_key,
        gpu_name=gpu_name,
        nodes=len(doc["nodes"]) if kind == "suite" else cluster.get("nodes"),
        gpus_per_node=cluster.get("gpus_per_node"),
        started_unix=started if isinstance(started, (int, float)) else None,
        contract=contract,
        metrics=metrics,
        nominal_b200_eq=capacity.get("nominal_b200_eq"),
        measured_b200_eq=capacity.get("measured_b200_eq"),
        delivered_fraction=capacity.get("delivered_fraction"),
        verdict=verdict,
        stored_verdict=_str(stored_verdict, "none"),
        seal=_aspect_text(seal),
        signature=_aspect_text(signature, assessment.signer),
        signer=assessment.signer or "",
        nonce=_aspect_text(nonce),
        figures=_aspect_text(figures),
        sha256=_str(original.get("sha256"), ""),
        passed=assessment.verified,  # an unsigned or unchecked file is not verified
        notes=notes,
        claims_sha256=claims_sha256,
    )


def _attach_spotchecks(rows: list[AuditRow]) -> None:
    """Each provider file's row shows the outcome of every spot check of it (matched by the
    claims file's sha256); a spot check whose signature no key given verified says so."""
    for check in (r for r in rows if r.kind == "spotcheck"):
        claimed = [r for r in rows if r.kind != "spotcheck" and r.sha256 == check.claims_sha256]
        trust = "signed by the auditor's key" if check.passed else "NOT VERIFIED"
        for row in claimed:
            found = f"{check.verdict} ({check.path}, {trust})"
            row.spotcheck = found if row.spotcheck == "-" else f"{row.spotcheck}; {found}"
        if not claimed:
            check.notes.append("the claims file it checked is not among the files audited")


SHORT_OK = {
    "seal": "OK",
    "signature": "OK: valid",
    "nonce": "OK: matches",
    "figures": "OK: re-derived from raw data",
}


def _catalogue_name(key: str) -> str:
    from gosok.launcher.config.catalogue import gpu_spec

    try:
        return gpu_spec(key).name
    except KeyError:
        return key


def _aspect_text(aspect: Any, signer: str | None = None) -> str:
    if aspect is None:
        return "-"
    if aspect.status == OK:
        text = SHORT_OK.get(aspect.name, "OK")
        return f"{text} ({signer})" if aspect.name == "signature" and signer else text
    return f"{aspect.status}: {aspect.detail}"


def _duplicate_notes(rows: list[AuditRow]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        if row.sha256 and row.sha256 in seen:
            row.notes.append(f"the same file as {seen[row.sha256]} (identical sha256)")
        seen.setdefault(row.sha256, row.path)


# --- tables --------------------------------------------------------------------------------

TRUST_HEAD = [
    "file",
    "provider / cluster",
    "GPU type",
    "date (UTC)",
    "seal",
    "signature",
    "nonce",
    "figures",
    "verdict (re-derived)",
    "spot check",
]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def trust_rows(rows: list[AuditRow]) -> list[list[str]]:
    return [
        [
            r.path,
            f"{r.provider} / {r.cluster}",
            f"{r.gpu_name} ({r.gpu_key})",
            r.date,
            r.seal,
            r.signature,
            r.nonce,
            r.figures,
            r.verdict,
            r.spotcheck,
        ]
        for r in rows
    ]


def side_by_side(rows: list[AuditRow]) -> tuple[list[str], list[list[str]]]:
    """One GPU type's clusters as columns, figures as rows."""
    head = ["", *[r.label for r in rows]]
    lines: list[list[str]] = [
        ["file", *[r.path for r in rows]],
        ["kind", *[r.kind for r in rows]],
        [
            "nodes x GPUs",
            *[
                f"{r.nodes if r.nodes is not None else '?'} x {r.gpus_per_node or '?'}"
                for r in rows
            ],
        ],
        ["contract", *[r.contract for r in rows]],
    ]
    for metric, title, how in METRICS:
        cells = [r.metrics.get(metric) for r in rows]
        if any(c is not None and c.value is not None for c in cells):
            lines.append([f"{title} ({how})", *[c.text() if c else "-" for c in cells]])
    lines += [
        ["B200-eq nominal", *[_fmt(r.nominal_b200_eq) for r in rows]],
        ["B200-eq measured", *[_fmt(r.measured_b200_eq) for r in rows]],
        ["delivered / nominal", *[_fmt(r.delivered_fraction, 3) for r in rows]],
        ["verdict (re-derived)", *[r.verdict for r in rows]],
        [
            "stored verdict",
            *[
                r.stored_verdict + (" (DIFFERS)" if r.stored_verdict != r.verdict else "")
                for r in rows
            ],
        ],
        ["signature", *[r.signature for r in rows]],
        ["nonce", *[r.nonce for r in rows]],
        ["figures", *[r.figures for r in rows]],
    ]
    return head, lines


def by_gpu_type(rows: list[AuditRow]) -> dict[str, list[AuditRow]]:
    groups: dict[str, list[AuditRow]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r.gpu_key, r.provider, r.cluster, r.date)):
        if row.kind != "spotcheck":  # its figures are the checked file's, shown there
            groups[row.gpu_key].append(row)
    return dict(groups)


# --- plots ---------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60] or "gpu"


def plot_gpu_type(rows: list[AuditRow], path: Path) -> Path | None:
    """% of spec per metric per cluster, and B200-equivalents nominal vs measured."""
    metrics = [
        (m, t)
        for m, t, _ in METRICS
        if any(r.metrics.get(m) and r.metrics[m].pct_of_spec is not None for r in rows)
    ]
    capacity = [r for r in rows if r.nominal_b200_eq is not None]
    if not metrics and not capacity:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("pct", "cap") if (p == "pct" and metrics) or (p == "cap" and capacity)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "pct":
            width = 0.8 / max(len(rows), 1)
            for i, row in enumerate(rows):
                xs = [j + i * width for j in range(len(metrics))]
                ys = [
                    (row.metrics[m].pct_of_spec or 0.0) if row.metrics.get(m) else 0.0
                    for m, _ in metrics
                ]
                ax.bar(xs, ys, width, label=row.label)
                floors = [
                    (x, row.metrics[m].floor_pct)
                    for x, (m, _) in zip(xs, metrics, strict=True)
                    if row.metrics.get(m) and row.metrics[m].floor_pct is not None
                ]
                if floors:
                    ax.scatter(
                        [f[0] for f in floors],
                        [f[1] for f in floors],
                        marker="_",
                        s=300,
                        color="black",
                        label="contracted floor" if i == 0 else None,
                    )
            ax.axhline(100.0, color="black", ls="--", lw=1, label="spec")
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
            ax.set_xticklabels([t for _, t in metrics], rotation=20, ha="right", fontsize=8)
            ax.set_ylabel("% of spec")
            ax.set_title("delivered, % of the GPU type's spec")
        else:
            xs = range(len(capacity))
            ax.bar(
                [x - 0.2 for x in xs],
                [r.nominal_b200_eq or 0 for r in capacity],
                0.4,
                label="nominal",
            )
            ax.bar(
                [x + 0.2 for x in xs],
                [r.measured_b200_eq or 0 for r in capacity],
                0.4,
                label="measured",
            )
            ax.set_xticks(list(xs))
            ax.set_xticklabels([r.label for r in capacity], rotation=20, ha="right", fontsize=7)
            ax.set_ylabel("B200-equivalents")
            ax.set_title("capacity, nominal vs measured")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rows[0].gpu_name} ({rows[0].gpu_key})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


# --- writers -------------------------------------------------------------------------------


def _md_cell(text: Any) -> str:
    """A Markdown table cell from text a results file supplied: no control character, no
    markup (``<``, ``>``, ``&``, ``|``) that could hide or forge rows."""
    cell = printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return cell.replace("|", "\\|")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _intro(rows: list[AuditRow], groups: dict[str, list[AuditRow]]) -> list[str]:
    passed = sum(1 for r in rows if r.passed)
    return [
        f"{len(rows)} results file(s), {len(groups)} GPU type(s); {passed} verified on every "
        "aspect checked.",
        "Every figure and verdict here is re-derived from the raw data each file holds, with "
        "the GPU entry and contract it recorded; stored verdicts are not trusted.",
        "GPU types are never compared with each other: each has its own section.",
    ]


NOT_AUDITED = "Not audited (not a results file, or not one gosok can judge)"


def render_markdown(
    rows: list[AuditRow], plots: dict[str, Path], unreadable: Sequence[str] = ()
) -> str:
    groups = by_gpu_type(rows)
    parts = ["# gosok audit", "", *_intro(rows, groups), ""]
    if unreadable:
        parts += [f"## {NOT_AUDITED}", "", *(f"- {_md_cell(u)}" for u in unreadable), ""]
    parts += ["## Trust", ""]
    parts += [_md_table(TRUST_HEAD, trust_rows(rows)), ""]
    for key, members in groups.items():
        parts += [f"## GPU type: {_md_cell(members[0].gpu_name)} ({_md_cell(key)})", ""]
        head, lines = side_by_side(members)
        parts += [_md_table(head, lines), ""]
        if key in plots:
            parts += [f"![{key}]({plots[key].name})", ""]
    notes = [(r.path, n) for r in rows for n in r.notes]
    if notes:
        parts += ["## Notes", ""] + [f"- {_md_cell(p)}: {_md_cell(n)}" for p, n in notes] + [""]
    return "\n".join(parts)


def _status_colour(text: str) -> str:
    first = text.split(":")[0].split(" ")[0]
    return COLOURS.get(first, "#333")


def _html_table(head: list[str], rows: list[list[str]], coloured: bool = True) -> str:
    out = ["<table><thead><tr>", *[f"<th>{html.escape(h)}</th>" for h in head], "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        cells = []
        for cell in row:
            colour = _status_colour(str(cell)) if coloured else "#333"
            cells.append(f'<td style="color:{colour}">{html.escape(str(cell))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(
    rows: list[AuditRow], plots: dict[str, Path], unreadable: Sequence[str] = ()
) -> str:
    groups = by_gpu_type(rows)
    if unreadable:
        items = "".join(f"<li>{html.escape(printable(u))}</li>" for u in unreadable)
        refused = f"<h2>{NOT_AUDITED}</h2><ul>{items}</ul>"
    else:
        refused = ""
    sections = []
    for key, members in groups.items():
        head, lines = side_by_side(members)
        image = ""
        if key in plots:
            data = base64.b64encode(plots[key].read_bytes()).decode("ascii")
            image = f'<img alt="{html.escape(key)}" src="data:image/png;base64,{data}">'
        sections.append(
            f"<h2>GPU type: {html.escape(members[0].gpu_name)} ({html.escape(key)})</h2>"
            f"{_html_table(head, lines)}{image}"
        )
    notes = "".join(
        f"<li>{html.escape(r.path)}: {html.escape(n)}</li>" for r in rows for n in r.notes
    )
    intro = "".join(f"<p>{html.escape(line)}</p>" for line in _intro(rows, groups))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>gosok audit: {len(rows)} results file(s)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>gosok audit</h1>
{intro}
{refused}
<h2>Trust</h2>
{_html_table(TRUST_HEAD, trust_rows(rows))}
{"".join(sections)}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
</body></html>
"""


def _csv_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula is prefixed with a quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_csv(rows: list[AuditRow]) -> str:
    head = [
        "file",
        "kind",
        "provider",
        "cluster",
        "gpu_type",
        "gpu_name",
        "nodes",
        "gpus_per_node",
        "date_utc",
        "started_unix",
        "contract",
    ]
    for metric, _, _ in METRICS:
        head += [
            f"{metric}",
            f"{metric}_unit",
            f"{metric}_pct_of_spec",
            f"{metric}_contract",
            f"{metric}_status",
        ]
    head += [
        "b200_eq_nominal",
        "b200_eq_measured",
        "delivered_fraction",
        "verdict_rederived",
        "verdict_stored",
        "seal",
        "signature",
        "signer_public_key",
        "nonce",
        "figures",
        "verified",
        "sha256",
        "spot_check",
        "notes",
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(head)
    for r in rows:
        line: list[Any] = [
            r.path,
            r.kind,
            r.provider,
            r.cluster,
            r.gpu_key,
            r.gpu_name,
            r.nodes,
            r.gpus_per_node,
            r.date,
            r.started_unix,
            r.contract,
        ]
        for metric, _, _ in METRICS:
            cell = r.metrics.get(metric)
            if cell is None:
                line += ["", "", "", "", ""]
            else:
                line += [cell.value, cell.unit, cell.pct_of_spec, cell.floor, cell.status or ""]
        line += [
            r.nominal_b200_eq,
            r.measured_b200_eq,
            r.delivered_fraction,
            r.verdict,
            r.stored_verdict,
            r.seal,
            r.signature,
            r.signer,
            r.nonce,
            r.figures,
            "yes" if r.passed else "no",
            r.sha256,
            r.spotcheck,
            " | ".join(r.notes),
        ]
        writer.writerow(["" if v is None else _csv_safe(v) for v in line])
    return buffer.getvalue()


def write_audit(
    assessments: list[Assessment], out_dir: Path, unreadable: list[str] | tuple[str, ...] = ()
) -> list[Path]:
    """audit.md, audit.html, audit.csv and one PNG per GPU type in ``out_dir``;
    ``unreadable`` lines name the files that could not be judged at all."""
    rows = [audit_row(a) for a in assessments]
    _duplicate_notes(rows)
    _attach_spotchecks(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for key, members in by_gpu_type(rows).items():
        made = plot_gpu_type(members, out_dir / f"audit_{_safe_name(key)}.png")
        if made is not None:
            plots[key] = made
    written = [
        atomic_write_bytes(out_dir / "audit.md", render_markdown(rows, plots, unreadable).encode()),
        atomic_write_bytes(out_dir / "audit.html", render_html(rows, plots, unreadable).encode()),
        atomic_write_bytes(out_dir / "audit.csv", render_csv(rows).encode()),
    ]
    return [*written, *plots.values()]
