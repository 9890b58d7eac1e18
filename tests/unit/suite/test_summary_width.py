"""The suite's terminal summary reads in an 80-column terminal: counts per phase and one
pair of lines per failing check name, never the whole table."""

from __future__ import annotations

from suite_synthetic import synthetic_doc

from gosok.benchmarks.suite.report import summary_lines


def test_summary_fits_80_columns_and_names_the_failures():
    lines = summary_lines(synthetic_doc(nodes=8, slow_node=3))
    assert all(len(line) < 80 for line in lines)
    assert any(line.startswith("FAIL compute.gemm_bf16_tflops: 8 x") for line in lines)
    assert len(lines) < 40  # 64 GPUs, grouped by check
    # Wrapped, never cut: every number of the full text is still there, whole.
    import re

    joined = " ".join(line.strip() for line in lines)
    assert "dense FP8 spec 1979.0)" in joined and "one way 450.0)" in joined
    assert not any(re.search(r"\d[eE.]?$", line) for line in lines if line.endswith("..."))
