"""Secrets never touch disk: values given on the command line or taken from the
environment are searched for in every file of the run dir and in the output."""

from __future__ import annotations

import os

from gosok.launcher.config.secrets import Redactor
from tests.conftest import run_gosok

TOKEN = "hf_SeCrEtToKeN1234567"
PASSWORD = "pw-Hunter2-Sekrit"
HOST_VALUE = "host-only-secret-98765"


def test_redactor_finds_names_urls_and_host_values():
    cfg = {
        "job": {"env": {"HF_TOKEN": TOKEN, "PLAIN": "visible"}, "env_from_host": ["MY_KEY_X"]},
        "ledger": {"path": f"postgresql://alice:{PASSWORD}@db.example/ledger"},
    }
    redactor = Redactor.for_config(cfg, environ={"MY_KEY_X": HOST_VALUE})
    text = f"{TOKEN} {PASSWORD} {HOST_VALUE} visible"
    assert redactor.text(text) == "<redacted> <redacted> <redacted> visible"
    data = redactor.data(cfg)
    assert data["job"]["env"] == {"HF_TOKEN": "<redacted>", "PLAIN": "visible"}
    assert PASSWORD not in str(data)


def test_no_secret_in_any_file_or_output(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hello')\n")
    run_dir = tmp_path / "run"
    result = run_gosok(
        "launch",
        "job=script",
        f"job.script={script}",
        f"+job.env.HF_TOKEN={TOKEN}",
        f"+job.env.DATABASE_URL=postgres://bob:{PASSWORD}@db/x",
        "job.env_from_host=[MY_PRIVATE_VALUE]",
        "logger=none",
        "dry_run=true",
        f"hydra.run.dir={run_dir}",
        env={"MY_PRIVATE_VALUE": HOST_VALUE, "GOSOK_STATE_DIR": str(tmp_path / "state")},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "<redacted>" in output
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files), files
    for secret in (TOKEN, PASSWORD, HOST_VALUE):
        assert secret not in output, secret
        for path in files:
            assert secret not in path.read_text(errors="replace"), (secret, path)
    assert os.environ.get("MY_PRIVATE_VALUE") is None
