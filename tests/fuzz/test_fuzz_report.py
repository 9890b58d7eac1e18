"""Random corruptions of a results file for ``gosok report`` (render, verify, compare):
truncated, edited, retyped, foreign or malformed JSON. Each must end in exit 0, 1 (the
file is not what it claims: tampered, not re-derivable) or 2 (not a results file), with
a message, never a traceback and never a hang."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from test_fuzz_cli import CASE_SECONDS, _Timeout, run_cli

from gosok.launcher.results.store import write_results

EXAMPLES = int(os.environ.get("GOSOK_FUZZ_EXAMPLES", "60"))


def sample_doc() -> dict:
    records = [
        {
            "op": "all_reduce", "dtype": "float32", "mode": "in_place", "group": 0,
            "world_size": 4, "ranks": [0, 1, 2, 3], "size_bytes": size, "count": size // 4,
            "redop": "sum", "root": None, "time_us": 100.0 * (i + 1), "time_reduce": "avg",
            "per_rank_time_us": [100.0 * (i + 1)] * 4,
            "algbw_gbps": size / (100e-6 * (i + 1)) / 1e9,
            "busbw_gbps": 1.5 * size / (100e-6 * (i + 1)) / 1e9, "busbw_factor": 1.5, "wrong": 0,
        }
        for i, size in enumerate((1024, 4096))
    ]  # fmt: skip
    return {
        "kind": "collectives",
        "config": {"cluster": {"name": "local", "gpu": "cpu"}, "bench": {"name": "collectives"}},
        "env": {"nodes": []},
        "records": records,
        "summary": {"avg_busbw_gbps": {}, "passed": True, "problems": []},
    }


def corrupt(text: str, rng: random.Random) -> str:
    how = rng.randrange(7)
    if how == 0:
        return text[: rng.randrange(len(text))]
    if how == 1:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice('{}[]",:0x\u00e9') + text[i + 1 :]
    doc = json.loads(text)
    if how == 2:
        return json.dumps([doc])
    if how == 3:
        doc.pop(rng.choice(sorted(doc)))
        return json.dumps(doc)
    if how == 4:
        key = rng.choice(sorted(doc))
        doc[key] = rng.choice([None, 7, "x", [], {}, [1, "a"], -1.5])
        return json.dumps(doc)
    if how == 5:
        record = rng.choice(doc.get("records") or [{}])
        if record:
            record[rng.choice(sorted(record))] = rng.choice([None, "nan", [], {}, -3, 1e300])
        return json.dumps(doc)
    return rng.choice(["", "null", "42", '"text"', "{}", '{"kind": 3}', "\u0000\u0001"])


@seed(20261127)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(salt=st.integers(0, 2**32 - 1), verb=st.sampled_from(["render", "verify", "compare"]))
def test_fuzz_report_inputs(tmp_path: Path, salt: int, verb: str):
    good = tmp_path / "good.json"
    write_results(good, sample_doc())
    bad = tmp_path / "bad.json"
    bad.write_text(corrupt(good.read_text(), random.Random(salt)))
    argv = {
        "render": ["report", str(bad)],
        "verify": ["report", "verify", str(bad)],
        "compare": ["report", "compare", str(good), str(bad)],
    }[verb]
    try:
        code, text = run_cli(argv)
    except _Timeout:
        raise AssertionError(f"no answer within {CASE_SECONDS} s: gosok {' '.join(argv)}") from None
    assert "Traceback" not in text, text
    assert code in (0, 1, 2), f"exit {code}\n{text}"
    if code:
        assert text.strip()
