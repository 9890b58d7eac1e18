"""Secrets never touch disk: values given on the command line or taken from the
environment are searched for in every file of the run dir and in the output."""

from __future__ import annotations

import os

import pytest

from gosok.launcher.config.secrets import Redactor, argument_secrets, is_secret_name
from tests.conftest import run_gosok

TOKEN = "hf_SeCrEtToKeN1234567"
PASSWORD = "pw-Hunter2-Sekrit"
HOST_VALUE = "host-only-secret-98765"
ARG_SECRET = "plain-arg-secret-4321"
SK = "sk-proj-AbCdEfGhIjKlMnOpQrSt"


@pytest.mark.parametrize(
    "name",
    ["SECRETS", "PASSWORDS", "DB_PASS", "SSH_PASSPHRASE", "SLACK_WEBHOOK_URL", "JWT",
     "SESSION_COOKIE", "HF_TOKEN", "WANDB_API_KEY", "hf-token", "apiKey"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["drift_keys", "key", "max_tokens", "bypass", "seq_len"])
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_arguments_values_and_urls_are_redacted_whole():
    args = ["--hf-token", TOKEN, f"--api_key={SK}", "--password", ARG_SECRET, "--lr", "3e-4"]
    assert sorted(set(argument_secrets(args))) == sorted({TOKEN, SK, ARG_SECRET})
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"
    text = Redactor().text(f"x {TOKEN} y {jwt} postgres://bob:p@ss@w0rd@db:5432/x --lr 3e-4")
    assert text == "x <redacted> y <redacted> postgres://bob:<redacted>@db:5432/x --lr 3e-4"
    redactor = Redactor.for_config({"job": {"args": args}})
    assert ARG_SECRET not in redactor.text(" ".join(args)) and "3e-4" in redactor.text("3e-4")


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
        f"job.args=[--hf-token,{TOKEN},'--api_key={SK}',--password,{ARG_SECRET},--lr,3e-4]",
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
    for secret in (TOKEN, PASSWORD, HOST_VALUE, SK, ARG_SECRET):
        assert secret not in output, secret
        for path in files:
            assert secret not in path.read_text(errors="replace"), (secret, path)
    assert os.environ.get("MY_PRIVATE_VALUE") is None
