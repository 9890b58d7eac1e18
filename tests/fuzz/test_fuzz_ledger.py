"""A fuzzer for ``gosok ledger allocate|report|push`` arguments: random values (empty,
NaN, negative, huge, dates in other spellings, markup, URLs with passwords, other schemes)
for each option. Every case must succeed (exit 0) or be refused with exit 2 and one line
naming the option, never a traceback, and never echo a password it was given."""

from __future__ import annotations

import contextlib
import io

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gosok.launcher.ledger.command import run_ledger_command
from tests.fuzz.test_fuzz_cli import EXAMPLES

SECRET = "hunter2-s3cret"
ANY = ["", " ", "nan", "inf", "-1", "0", "1", "8", "1e309", "99999999999999999999", "x" * 300,
       "[markup]", "2026-13-01", "2026-01-01", "2026-01-01T10:00", "2026-01-02", "01/02/2026",
       "é", "\x00", "1.5"]  # fmt: skip
LEDGERS = ["postgresql://u:" + SECRET + "@h/db", "postgresql://u@h/db?password=" + SECRET,
           "mysql://h/db", "sqlite://host/x", "postgresql:///nohost", "sqlite:///{tmp}/l.db",
           "{tmp}", "{tmp}/missing/dir/l.db"]  # fmt: skip
ALLOCATE = ("--project", "--cluster", "--provider", "--gpu-type", "--gpus", "--from", "--to")


def _value(tmp: str):
    return st.sampled_from(ANY) | st.text(max_size=12)


@st.composite
def argv(draw, tmp: str) -> list[str]:
    action = draw(st.sampled_from(["allocate", "report", "push"]))
    args = [action]
    if draw(st.booleans()):
        args += ["--ledger", draw(st.sampled_from(LEDGERS)).format(tmp=tmp)]
    if action == "allocate":
        for flag in ALLOCATE:
            if draw(st.integers(0, 4)):
                args += [flag, draw(_value(tmp))]
    elif action == "report":
        args += ["--out-dir", draw(st.sampled_from([f"{tmp}/r", "", f"{tmp}/l.db"]))]
        if draw(st.booleans()):
            args.append("--programme")
        if draw(st.booleans()):
            args += ["--stretch-h", draw(_value(tmp))]
    return args


@seed(20261207)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_ledger_command(tmp_path, data):
    tmp = str(tmp_path)
    case = data.draw(argv(tmp))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_ledger_command(case)
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text, (case, text)
    assert SECRET not in text, (case, text)
    assert code in (0, 2) or (case[0] == "push" and code == 1), (code, case, text)
    if code == 2:
        assert err.getvalue().startswith("error: ") and len(err.getvalue().splitlines()) == 1
