"""The programme view: allocated = productive + overhead + idle for every allocation, idle
stretches flagged, groups ranked by their gap; ``gosok ledger allocate`` and ``report
--programme`` from the command line."""

from __future__ import annotations

import math
import sqlite3

import pytest

from gosok.launcher.ledger.command import run_ledger_command
from gosok.launcher.ledger.db import Ledger
from gosok.launcher.ledger.programme import programme_view
from gosok.launcher.ledger.sampler import busy_intervals

H = 3600.0
ALLOC = {"provider": "cloud-a", "cluster": "c1", "gpu_type": "H200", "project": "llm",
         "gpus": 16, "start_unix": 0.0, "end_unix": 10 * H}  # fmt: skip


def job(start_h, end_h, gpus, productive_h, cluster="c1", project="llm"):
    return {"cluster": cluster, "project": project, "gpus": gpus, "started_unix": start_h * H,
            "wall_s": (end_h - start_h) * H, "productive": productive_h * H}  # fmt: skip


def usage(jobs, spans=(), watched=(), allocations=(ALLOC,), now=100 * H, stretch_s=H):
    """The view's first group in GPU-seconds, and the stretches."""
    view = programme_view(list(allocations), jobs, list(spans), now, stretch_s, list(watched))
    groups: dict = {}
    for g in view["groups"]:  # a project's groups (one per provider) added up
        mine = groups.setdefault(g["project"], {})
        for k, v in g.items():
            if k.endswith("_hours"):
                mine[k[:-6]] = mine.get(k[:-6], 0.0) + v * H
    return groups, [(s["start_unix"] / H, s["end_unix"] / H) for s in view["stretches"]]


def test_parts_add_up_and_capacity_caps_use():
    jobs = [job(1, 4, 8, 2.5), job(2, 3, 16, 1.0), job(6, 7, 8, 0.25),
            job(0, 10, 8, 9, cluster="c2"), job(0, 10, 8, 9, project="other")]  # fmt: skip
    spans = [{"cluster": "c1", "start_unix": 6.5 * H, "end_unix": 9 * H}]
    groups, stretches = usage(jobs, spans)
    got = groups["llm"]
    assert got["allocated"] == 16 * 10 * H
    # 1-2 h: 8; 2-3 h: 24 capped at 16 (the 16-GPU job gets the 8 left); 3-4 h: 8; 6-7 h: 8
    assert got["used"] == (8 + 16 + 8 + 8) * H
    assert math.isclose(got["productive"], (8 * 2.5 / 3 * 3 + 8 * 1.0 + 8 * 0.25) * H)
    # The idle span overlaps 6.5-7 h, when this allocation held 8 of the 16 GPUs running
    # (the other project's job has no allocation here: it is counted against none).
    assert math.isclose(got["low_util"], 0.5 * H * 8 / 16)
    total = got["productive"] + got["overhead"] + got["idle"]
    assert math.isclose(total, got["allocated"])
    assert stretches == [(7, 10), (4, 6), (0, 1)]


def test_allocations_count_to_now_and_stretches_are_flagged_and_ranked():
    busy = dict(ALLOC, cluster="c2", gpus=8)
    jobs = [job(0, 5, 8, 4.5, cluster="c2"), job(0, 1, 16, 0.9)]
    view = programme_view([ALLOC, busy], jobs, [], now_unix=5 * H, stretch_s=2 * H)
    first, second = view["groups"]
    assert (first["cluster"], second["cluster"]) == ("c1", "c2")  # the larger gap first
    assert first["allocated_hours"] == 16 * 5 and first["idle_hours"] == 16 * 4
    assert second["idle_hours"] == 0 and math.isclose(second["productive_hours"], 8 * 4.5)
    (stretch,) = view["stretches"]
    assert (stretch["cluster"], stretch["start_unix"], stretch["end_unix"]) == ("c1", H, 5 * H)


def test_allocate_and_programme_report_from_the_command_line(tmp_path, capsys):
    ledger_path = str(tmp_path / "l.sqlite")
    grants = tmp_path / "grants.csv"
    grants.write_text(
        "project,cluster,provider,gpu_type,gpus,from,to\n"
        "llm,c1,cloud-a,H200,16,2026-01-01,2026-01-02\n"
        "vision,c2,cloud-b,B200,8,2026-01-01T00:00,2026-01-01T12:00\n"
    )
    assert run_ledger_command(["allocate", "--ledger", ledger_path, "--csv", str(grants)]) == 0
    assert run_ledger_command(["allocate", "--ledger", ledger_path, "--csv", str(grants)]) == 0
    args = ["--project", "llm", "--cluster", "c1", "--gpu-type", "H200", "--gpus", "8",
            "--from", "2026-01-02", "--to", "2026-01-03"]  # fmt: skip
    assert run_ledger_command(["allocate", "--ledger", ledger_path, *args]) == 0
    with Ledger.open(ledger_path) as ledger:
        assert len(ledger.allocations()) == 3  # the CSV twice is the same two grants
    out = tmp_path / "r"
    code = run_ledger_command(["report", "--programme", "--ledger", ledger_path,
                               "--out-dir", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "IDLE STRETCH c1/llm" in text and "IDLE STRETCH c2/vision" in text
    assert "IDLE STRETCHES" in (out / "programme.md").read_text()
    assert (out / "programme.html").read_text().count("data:image/png;base64,") == 2
    assert (out / "programme.csv").read_text().splitlines()[0].startswith("provider,cluster")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["allocate", "--project", "p"], "missing --cluster"),
        (["allocate", "--project", "p", "--cluster", "c", "--gpu-type", "H100", "--gpus", "0",
          "--from", "2026-01-01", "--to", "2026-01-02"], "'0' is not allowed"),
        (["allocate", "--project", "p", "--cluster", "c", "--gpu-type", "H100", "--gpus", "8",
          "--from", "2026-01-02", "--to", "2026-01-01"], "--to must be after --from"),
        (["allocate", "--project", "p", "--cluster", "c", "--gpu-type", "H100", "--gpus", "8",
          "--from", "yesterday", "--to", "2026-01-01"], "'yesterday' is not allowed"),
        (["allocate", "--csv", "/nonexistent.csv"], "cannot read it"),
        (["serve", "--port", "99999"], "port 0-65535"),
        (["push", "--ledger", "postgresql://u:secret@h/db"], "PGPASSWORD"),
    ],
)  # fmt: skip
def test_bad_input_is_named(argv, named, capsys):
    assert run_ledger_command(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and "secret" not in err


def test_work_run_without_gosok_counts_as_used_not_idle():
    # Two watched GPUs busy from 2 h to 4 h; one gosok job of 8 GPUs runs 3-4 h on the
    # same cluster: 2-3 h adds 2 GPU-hours outside gosok; 3-4 h the watchers see fewer
    # busy devices than the job holds, so nothing more.
    watched = [("c1", "n1", f"gpu{d}", 2 * H + 60 * i, 2 * H + 60 * (i + 1))
               for d in range(2) for i in range(120)]  # fmt: skip
    watched += [("c1", "n1", "cpu", 0.0, 10 * H), ("c2", "n9", "gpu0", 0.0, 10 * H)]
    groups, stretches = usage([job(3, 4, 8, 0.5)], watched=watched)
    got = groups["llm"]
    assert math.isclose(got["outside"], 2 * H)
    assert math.isclose(got["used"], 8 * H + 2 * H)
    assert math.isclose(got["productive"] + got["overhead"] + got["idle"], got["allocated"])
    # 0-2 h and 4-10 h ran nothing and were quiet; 2-3 h was busy outside gosok.
    assert stretches == [(4, 10), (0, 2)]


def test_another_projects_work_is_not_this_allocations_use():
    other = dict(ALLOC, project="vision", gpus=24)
    watched = [("c1", "n", f"gpu{d}", 0.0, 10 * H) for d in range(24)]  # its 24 GPUs busy
    groups, stretches = usage([job(0, 10, 24, 9, project="vision")], watched=watched,
                              allocations=(ALLOC, other))  # fmt: skip
    assert groups["llm"]["used"] == 0 and groups["llm"]["idle"] == 16 * 10 * H
    assert groups["vision"]["used"] == 24 * 10 * H
    assert stretches == [(0, 10)]


def test_a_job_is_counted_once_across_two_grants():
    top_up = dict(ALLOC, provider="cloud-b", gpus=8)
    groups, _ = usage([job(0, 10, 8, 10)], allocations=(ALLOC, top_up))
    assert groups["llm"]["productive"] == 8 * 10 * H  # the first grant took the job's GPUs
    assert groups["llm"]["allocated"] == (16 + 8) * 10 * H


def test_busy_intervals_follow_the_samples():
    values = ((0, 90), (10, 2), (20, 50), (30, 60), (200, 70))
    rows = [{"cluster": "c", "node": "n", "device": "gpu0", "unix": float(t),
             "gpu_util_pct": u} for t, u in values]  # fmt: skip
    assert busy_intervals(rows, 5.0) == [
        ("c", "n", "gpu0", 0.0, 10.0), ("c", "n", "gpu0", 20.0, 30.0),
        ("c", "n", "gpu0", 30.0, 60.0), ("c", "n", "gpu0", 200.0, 230.0),
    ]  # fmt: skip


def test_metrics_say_when_the_ledger_is_away_and_recover(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gosok.launcher.ledger.metrics import LedgerCollector

    path = tmp_path / "l.sqlite"
    away = {"now": True}

    def opener():
        if away["now"]:
            raise sqlite3.OperationalError("database is locked")
        return Ledger.open(path)

    Ledger.open(path).close()
    registry = CollectorRegistry()
    registry.register(LedgerCollector(opener, cache_s=0.0))

    def up() -> float:
        text = generate_latest(registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families["gosok_ledger_up"].samples[0].value

    assert up() == 0.0
    away["now"] = False
    assert up() == 1.0
