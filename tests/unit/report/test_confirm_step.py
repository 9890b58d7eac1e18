"""The compute phase's confirm step: a GPU that reads low is measured again, judged by the
better of its two readings, and both readings stay in the file and re-derive."""

from __future__ import annotations

import copy

from trust_docs import suite_doc

from gosok.benchmarks.suite.derive import rederive_suite
from gosok.benchmarks.suite.evaluate import confirmed_ranks


def with_confirm(first_slow: int | None, second_slow: int | None) -> dict:
    doc = suite_doc(slow_node=first_slow, seed=1)
    again = suite_doc(slow_node=second_slow, seed=2)
    doc["phases"]["compute"]["confirm"] = {
        "reason": ["node 1 gpu 0"],
        "ranks": copy.deepcopy(again["phases"]["compute"]["ranks"]),
    }
    return rederive_suite.full(doc)


def test_a_low_reading_that_does_not_repeat_is_not_a_fail():
    once = rederive_suite.full(suite_doc(slow_node=1, seed=1)).doc
    assert once["verdict"]["cluster"] == "FAIL"
    result = with_confirm(first_slow=1, second_slow=None)
    assert result.doc is not None, result.malformed
    assert "FAIL" not in {c["status"] for c in result.doc["checks"] if c["phase"] == "compute"}


def test_a_low_reading_that_repeats_fails_naming_the_node():
    result = with_confirm(first_slow=1, second_slow=1)
    assert result.doc["verdict"]["cluster"] == "FAIL"
    assert [n["node_rank"] for n in result.doc["verdict"]["failing_nodes"]] == [1]


def test_judged_by_the_better_reading_of_each_figure():
    doc = suite_doc(slow_node=1, seed=1)
    phase = doc["phases"]["compute"]
    phase["confirm"] = {"reason": [], "ranks": copy.deepcopy(phase["ranks"])}
    for row in phase["confirm"]["ranks"]:
        row["gemm"]["bf16"]["tflops"] *= 2
    best = confirmed_ranks(phase)
    assert [r["gemm"]["bf16"]["tflops"] for r in best] == [
        r["gemm"]["bf16"]["tflops"] for r in phase["confirm"]["ranks"]
    ]
    assert [r["hbm"] for r in best] == [r["hbm"] for r in phase["ranks"]]
