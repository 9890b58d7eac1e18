"""A fuzzer for bad input: random overrides drawn from the config schemas (wrong types,
NaN/inf, negatives, huge values, empty lists, unknown names, markup characters) for
``gosok bench``, ``gosok bench suite=...`` and ``gosok launch``, all in dry-run mode.

Each case runs the real CLI in this process (no Ray is ever contacted on a dry run) and
must either succeed (exit 0) or be refused with exit 2 and a message — never a traceback,
never a hang (each case has a time bound). Fixed seed, a few hundred cases in CI;
``GOSOK_FUZZ_EXAMPLES=5000 pytest tests/fuzz`` for a long run. These run in CI, apart from
the quick ``tests/unit`` loop.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gosok.benchmarks.collectives.schema import CollectivesBenchConfig
from gosok.benchmarks.compute.schema import GemmBenchConfig
from gosok.benchmarks.suite.schema import SuiteConfig
from gosok.launcher.cli import main
from gosok.launcher.config.launch_schema import (
    CheckpointConfig,
    FaultConfig,
    RecipeJobConfig,
    ScriptJobConfig,
)
from gosok.launcher.config.schema import ClusterConfig

CASE_SECONDS = 30
EXAMPLES = int(os.environ.get("GOSOK_FUZZ_EXAMPLES", "60"))
SCRIPT = Path(__file__).with_name("fuzz_script.py")


def leaf_keys(schema: Any, prefix: str) -> list[str]:
    """Dotted keys of every leaf field of a config dataclass."""
    keys = []
    for item in fields(schema):
        default = item.default_factory() if callable(item.default_factory) else item.default
        if is_dataclass(default):
            keys += leaf_keys(type(default), f"{prefix}.{item.name}")
        else:
            keys.append(f"{prefix}.{item.name}")
    return keys


def _skip(key: str) -> bool:
    # Paths that start things elsewhere or name files are exercised by their own tests.
    return key.endswith((".name", ".script", ".python", ".workdir", ".dir", ".address"))


BENCH_KEYS = [
    k
    for k in leaf_keys(CollectivesBenchConfig, "bench") + leaf_keys(ClusterConfig, "cluster")
    if not _skip(k)
]
GEMM_KEYS = [k for k in leaf_keys(GemmBenchConfig, "bench") if not _skip(k)]
SUITE_KEYS = [k for k in leaf_keys(SuiteConfig, "suite") if not _skip(k)]
LAUNCH_KEYS = [
    k
    for schema, prefix in (
        (RecipeJobConfig, "job"),
        (CheckpointConfig, "checkpoint"),
        (FaultConfig, "fault"),
        (ClusterConfig, "cluster"),
    )
    for k in leaf_keys(schema, prefix)
    if not _skip(k)
]

HOSTILE = st.sampled_from(
    [
        "nan", "inf", "-inf", "-1", "0", "-0.5", "1e15", "99999999999999999999", "1e308",
        "abc", "''", "'[/]'", "'[bold red]x[/]'", "[]", "[bogus]", "[1,2]", "{a: 1}",
        "null", "true", "int8", "all_reduce", "'x y'", "'%s%n'", "3.5", "2", "1",
        "'\u00e9\u00e8'", "[all_reduce,all_reduce]", "'\\u0000'",
    ]
)  # fmt: skip


def overrides(keys: list[str]) -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(keys), HOSTILE).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, min_size=1, max_size=3)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def run_cli(argv: list[str]) -> tuple[int, str]:
    """The CLI in-process: (exit code, everything printed). Raises on a hang."""
    out = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    code: Any = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main(argv)
    except SystemExit as done:
        code = done.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return (code if isinstance(code, int) else 1), out.getvalue()


def assert_clean(argv: list[str], tmp: Path) -> None:
    env_before = dict(os.environ)
    try:
        code, text = run_cli([*argv, f"hydra.run.dir={tmp}", "hydra.output_subdir=null"])
    except _Timeout:
        pytest.fail(f"no answer within {CASE_SECONDS} s: gosok {' '.join(argv)}")
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert "Traceback" not in text, f"gosok {' '.join(argv)}\n{text}"
    assert code in (0, 2), f"exit {code}: gosok {' '.join(argv)}\n{text}"
    if code == 2:
        assert text.strip(), f"refused without a message: gosok {' '.join(argv)}"


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _no_state(tmp_path, monkeypatch):
    monkeypatch.setenv("GOSOK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


@seed(20261122)
@FUZZ
@given(extra=overrides(BENCH_KEYS))
def test_fuzz_bench(tmp_path, extra):
    assert_clean(["bench", *extra, "dry_run=true"], tmp_path)


@seed(20261123)
@FUZZ
@given(extra=overrides(GEMM_KEYS))
def test_fuzz_bench_gemm(tmp_path, extra):
    assert_clean(["bench", "bench=gemm", *extra, "dry_run=true"], tmp_path)


@seed(20261124)
@FUZZ
@given(extra=overrides(SUITE_KEYS), suite=st.sampled_from(["quick", "acceptance", "audit"]))
def test_fuzz_suite(tmp_path, extra, suite):
    assert_clean(["bench", f"suite={suite}", *extra, "dry_run=true"], tmp_path)


@seed(20261125)
@FUZZ
@given(extra=overrides(LAUNCH_KEYS))
def test_fuzz_launch_recipe(tmp_path, extra):
    assert_clean(["launch", "job=recipe", "logger=none", *extra, "dry_run=true"], tmp_path)


@seed(20261126)
@FUZZ
@given(
    extra=overrides(leaf_keys(ScriptJobConfig, "job")),
    env=st.dictionaries(
        st.sampled_from(["RANK", "GOSOK_X", "1BAD", "OK_NAME", "MASTER_ADDR", "a-b", "X"]),
        HOSTILE,
        max_size=2,
    ),
)
def test_fuzz_launch_script(tmp_path, extra, env):
    args = [f"+job.env.{k}={v}" for k, v in env.items()]
    argv = ["launch", "job=script", f"job.script={SCRIPT}", "logger=none", *extra, *args]
    assert_clean([*argv, "dry_run=true"], tmp_path)
