"""busbw factors and the bandwidth maths, checked against nccl-tests' formulas
(doc/PERFORMANCE.md): algbw = S/t; busbw = algbw x factor."""

from __future__ import annotations

import pytest
import torch

from gosok.benchmarks.collectives.ops import (
    COLLECTIVES,
    count_wrong,
    element_count,
    pattern,
    summed,
)
from gosok.benchmarks.collectives.report import bandwidths, reduce_times
from gosok.benchmarks.collectives.schema import sweep_sizes
from tests.conftest import NCCL_TESTS_BUSBW_FACTORS


@pytest.mark.parametrize("op", sorted(NCCL_TESTS_BUSBW_FACTORS))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 4080])
def test_busbw_factor_matches_nccl_tests(op, n):
    assert COLLECTIVES[op].busbw_factor(n) == pytest.approx(NCCL_TESTS_BUSBW_FACTORS[op](n))


def test_bandwidth_numbers():
    # 1 GiB all_reduce in 10 ms on 8 ranks: algbw 107.374 GB/s, busbw x 1.75.
    algbw, busbw = bandwidths("all_reduce", 2**30, 10_000.0, 8)
    assert algbw == pytest.approx(2**30 / 0.01 / 1e9)
    assert busbw == pytest.approx(algbw * 1.75)
    assert bandwidths("broadcast", 1000, 1.0, 4) == pytest.approx((1.0, 1.0))


def test_time_reductions():
    times = [10.0, 20.0, 60.0]
    assert reduce_times(times, "avg") == 30.0
    assert reduce_times(times, "min") == 10.0
    assert reduce_times(times, "max") == 60.0
    assert reduce_times(times, "rank0") == 10.0


def test_sizes_and_counts_follow_nccl_tests():
    assert sweep_sizes(8, 128, 2) == [8, 16, 32, 64, 128]
    assert sweep_sizes(1024, 5000, 4) == [1024, 4096]
    assert element_count(1000, 4, 3, chunked=True) == 249
    assert element_count(1000, 4, 3, chunked=False) == 250


def test_wrong_count_detects_corruption():
    expected = summed(1000, 4, torch.float32, torch.device("cpu"))
    good = expected.to(torch.float32)
    assert count_wrong(good, expected, 4) == 0
    bad = good.clone()
    bad[[3, 500]] += 1
    bad[7] = float("nan")
    assert count_wrong(bad, expected, 4) == 3


def test_pattern_is_exact_in_low_precision():
    for dtype in (torch.bfloat16, torch.float16):
        values = pattern(4096, 5, dtype, torch.device("cpu"))
        assert torch.equal(
            values.to(torch.float64), pattern(4096, 5, torch.float64, torch.device("cpu"))
        )
