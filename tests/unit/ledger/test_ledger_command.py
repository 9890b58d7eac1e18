"""``gosok ledger report|watch``: a summary on success, one line and exit 2 on bad input."""

from __future__ import annotations

import pytest

from gosok.launcher.ledger.command import run_ledger_command
from gosok.launcher.ledger.db import Ledger


@pytest.fixture(autouse=True)
def private_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def ledger_file(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        ledger.start_job(
            "job-a", project="p", cluster="c", gpu_type="H100", gpus=8, started_unix=0.0
        )
        ledger.record_attempt("job-a", 0, first_step_unix=360.0, ended_unix=3600.0)
        ledger.finish_job("job-a", exit_status="ok", finished_unix=3600.0)
    return path


def test_report_prints_jobs_and_writes_files(ledger_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_ledger_command(["report", "--ledger", str(ledger_file), "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "job-a" in printed and "90.00%" in printed and "8.00 GPU-hours" in printed
    assert (out / "ledger.html").is_file()
    since = ["--since", "2001-01-01", "--project", "p"]
    assert (
        run_ledger_command(["report", "--ledger", str(ledger_file), "--out-dir", str(out), *since])
        == 0
    )
    assert "0 jobs" in capsys.readouterr().out
    other = ["--project", "llm"]
    assert (
        run_ledger_command(["report", "--ledger", str(ledger_file), "--out-dir", str(out), *other])
        == 0
    )
    said = capsys.readouterr().out
    assert "no jobs for project 'llm'" in said and "holds project(s): p" in said


def test_watch_runs_for_its_duration(tmp_path, capsys):
    path = tmp_path / "w.sqlite"
    argv = [
        "watch",
        "--ledger",
        str(path),
        "--cluster",
        "c",
        "--interval-s",
        "0.05",
        "--duration-s",
        "0.3",
        "--node",
        "me",
    ]
    assert run_ledger_command(argv) == 0
    assert "samples" in capsys.readouterr().out
    with Ledger.open(path) as ledger:
        assert ledger.samples(node="me")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["report", "--ledger", "{missing}", "--out-dir", "o"], "--ledger"),
        (["report", "--ledger", "{ledger}", "--since", "2024-13-01", "--out-dir", "o"], "--since"),
        (["report", "--ledger", "{ledger}", "--since", "yesterday", "--out-dir", "o"], "--since"),
        (["report", "--ledger", "{ledger}"], "--out-dir"),
        (["report", "--ledger", "postgresql://u:pw@h/db", "--out-dir", "o"], "PGPASSWORD"),
        (["report", "--ledger", "{notledger}", "--out-dir", "o"], "--ledger"),
        (["watch", "--cluster", "c", "--interval-s", "nan"], "--interval-s"),
        (["watch", "--cluster", "c", "--interval-s", "0"], "--interval-s"),
        (["watch", "--cluster", "c", "--duration-s", "-5"], "--duration-s"),
        (["watch", "--cluster", "c", "--duration-s", "inf"], "--duration-s"),
        (["watch", "--cluster", "c", "--idle-below", "150"], "--idle-below"),
        (["watch", "--cluster", "c", "--idle-for-s", "-1e309"], "--idle-for-s"),
        (["watch", "--cluster", ""], "--cluster"),
        (["watch"], "--cluster"),
        (["frobnicate"], "frobnicate"),
        ([], "action"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, named, ledger_file, tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not a database, just text " * 100)
    values = {
        "missing": str(tmp_path / "absent.sqlite"),
        "ledger": str(ledger_file),
        "notledger": str(junk),
    }
    argv = [a.format(**values) for a in argv]
    assert run_ledger_command(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err
    assert "Traceback" not in err and "pw@" not in err


def test_help_exits_0(capsys):
    assert run_ledger_command(["--help"]) == 0
    assert "report" in capsys.readouterr().out
