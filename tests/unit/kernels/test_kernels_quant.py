"""FP8 quantisation helpers: edge values, scale shapes per recipe, round-trip error bounds.

Run: ``pytest tests/kernels/test_kernels_quant.py`` (under a second on CPU).

Round-trip bound used below, per element: round-to-nearest into a format with ``p``
mantissa bits errs by at most 2^-(p+1) relative for normal numbers (e4m3: 2^-4, e5m2:
2^-3), and by at most half the smallest subnormal spacing in absolute terms
(e4m3: 2^-10, e5m2: 2^-17), times the block's scale after dequantisation.
"""

from __future__ import annotations

import math

import pytest
import torch

from gosok.kernels.errors import KernelUnsupportedError
from gosok.kernels.quant import (
    BLOCK,
    E4M3,
    E5M2,
    RECIPES,
    amax_to_scale,
    dequantize_blockwise_lhs,
    dequantize_blockwise_rhs,
    dequantize_operands,
    dequantize_rowwise,
    dequantize_tensorwise,
    expand_block_scale,
    quantize_blockwise_lhs,
    quantize_blockwise_rhs,
    quantize_operands,
    quantize_rowwise_lhs,
    quantize_rowwise_rhs,
    quantize_tensorwise,
    saturating_cast,
    scale_shapes,
)

ROUNDING = {E4M3: (2.0**-4, 2.0**-10), E5M2: (2.0**-3, 2.0**-17)}
QUANTIZERS = {
    "tensorwise": quantize_tensorwise,
    "rowwise_lhs": quantize_rowwise_lhs,
    "rowwise_rhs": quantize_rowwise_rhs,
    "blockwise_lhs": quantize_blockwise_lhs,
    "blockwise_rhs": quantize_blockwise_rhs,
}
DEQUANTIZERS = {
    "tensorwise": dequantize_tensorwise,
    "rowwise_lhs": dequantize_rowwise,
    "rowwise_rhs": dequantize_rowwise,
    "blockwise_lhs": dequantize_blockwise_lhs,
    "blockwise_rhs": dequantize_blockwise_rhs,
}


def _expanded_scale(kind: str, scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if kind == "blockwise_lhs":
        return expand_block_scale(scale, 1, BLOCK, shape)
    if kind == "blockwise_rhs":
        return expand_block_scale(scale, BLOCK, BLOCK, shape)
    return scale.expand(shape)


def test_scale_is_dequantisation_scale() -> None:
    x = torch.randn(32, 48)
    q, scale = quantize_tensorwise(x)
    assert scale.shape == ()
    assert torch.equal(scale, x.abs().max() / 448.0)
    assert q.float().abs().max() == 448.0
    assert torch.allclose(q.float() * scale, x, rtol=2.0**-4, atol=float(scale) * 2.0**-10)


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_amax_zero_gives_scale_one(fp8_dtype: torch.dtype) -> None:
    scale = amax_to_scale(torch.tensor([0.0, 448.0, 57344.0]), fp8_dtype)
    fp8_max = 448.0 if fp8_dtype == E4M3 else 57344.0
    assert scale.tolist() == [1.0, 448.0 / fp8_max, 57344.0 / fp8_max]


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_all_zero_tensor_quantises_to_zeros_with_scale_one(kind: str) -> None:
    q, scale = QUANTIZERS[kind](torch.zeros(130, 260))
    assert torch.all(scale == 1.0)
    assert torch.all(q.float() == 0.0)
    assert not torch.isnan(DEQUANTIZERS[kind](q, scale)).any()


def test_zero_row_and_zero_block_keep_their_neighbours() -> None:
    a = torch.randn(4, 256)
    a[1] = 0.0
    a[2, 128:] = 0.0
    qa, sa = quantize_blockwise_lhs(a)
    assert sa[1].tolist() == [1.0, 1.0]
    assert sa[2, 1] == 1.0 and sa[2, 0] != 1.0
    assert torch.all(qa.float()[1] == 0) and torch.all(qa.float()[2, 128:] == 0)
    q_rows, s_rows = quantize_rowwise_lhs(a)
    assert s_rows[1, 0] == 1.0 and torch.all(q_rows.float()[1] == 0)


def test_e4m3_saturates_at_448() -> None:
    x = torch.tensor([448.0, 449.0, 464.0, 500.0, 1e4, 3e38, -448.0, -1e6])
    assert saturating_cast(x, E4M3).float().tolist() == [448.0] * 6 + [-448.0, -448.0]


def test_e5m2_saturates_at_57344() -> None:
    x = torch.tensor([57344.0, 57345.0, 61440.0, 1e6, -1e30])
    assert saturating_cast(x, E5M2).float().tolist() == [57344.0] * 4 + [-57344.0]


def test_representable_values_survive_cast_unchanged() -> None:
    x = torch.tensor([0.0, 1.0, -2.5, 0.001953125, 240.0, 448.0])
    assert torch.equal(saturating_cast(x, E4M3).float(), x)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_inf_and_nan_are_rejected(kind: str, bad: float) -> None:
    x = torch.randn(130, 260)
    x[3, 7] = bad
    with pytest.raises(ValueError, match="inf or NaN"):
        QUANTIZERS[kind](x)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_saturating_cast_rejects_inf_and_nan(bad: float) -> None:
    with pytest.raises(ValueError, match="inf or NaN"):
        saturating_cast(torch.tensor([1.0, bad]))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported FP8 dtype"):
        quantize_tensorwise(torch.randn(4, 4), torch.float16)
    with pytest.raises(ValueError, match="high-precision float"):
        quantize_tensorwise(torch.randn(4, 4).to(E4M3))
    with pytest.raises(ValueError, match="empty"):
        quantize_tensorwise(torch.randn(0, 4))
    with pytest.raises(ValueError, match="2-D"):
        quantize_rowwise_lhs(torch.randn(2, 3, 4))


def test_unknown_recipe_lists_allowed_names() -> None:
    with pytest.raises(KernelUnsupportedError, match="tensorwise, rowwise, blockwise"):
        quantize_operands(torch.randn(4, 4), torch.randn(4, 4), "per-channel")
    assert issubclass(KernelUnsupportedError, ValueError)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("m, k, n", [(5, 300, 130), (128, 256, 256), (1, 16, 16)])
def test_scale_shapes_per_recipe(recipe: str, m: int, k: int, n: int) -> None:
    qa, sa, qb, sb = quantize_operands(torch.randn(m, k), torch.randn(k, n), recipe)
    assert qa.shape == (m, k) and qb.shape == (k, n)
    assert qa.dtype == E4M3 and qb.dtype == E4M3
    assert sa.dtype == torch.float32 and sb.dtype == torch.float32
    want_sa, want_sb = scale_shapes(recipe, m, k, n)
    assert tuple(sa.shape) == want_sa and tuple(sb.shape) == want_sb
    expected = {
        "tensorwise": ((), ()),
        "rowwise": ((m, 1), (1, n)),
        "blockwise": ((m, math.ceil(k / 128)), (math.ceil(k / 128), math.ceil(n / 128))),
    }[recipe]
    assert (want_sa, want_sb) == expected


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_round_trip_error_is_within_half_a_unit(kind: str, fp8_dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(200, 300, generator=gen) * torch.exp2(
        torch.randint(-6, 7, (200, 1), generator=gen)
    )
    q, scale = QUANTIZERS[kind](x, fp8_dtype)
    assert q.dtype == fp8_dtype
    x_hat = DEQUANTIZERS[kind](q, scale)
    relative, subnormal_abs = ROUNDING[fp8_dtype]
    bound = relative * x.abs() + subnormal_abs * _expanded_scale(kind, scale, x.shape)
    assert torch.all((x_hat - x).abs() <= bound * (1 + 1e-6))


@pytest.mark.parametrize("kind", list(QUANTIZERS))
def test_each_blocks_amax_maps_to_fp8_max(kind: str) -> None:
    x = torch.randn(130, 260)
    q, scale = QUANTIZERS[kind](x)
    full = _expanded_scale(kind, scale, x.shape)
    for value in scale.unique():
        assert q.float()[full == value].abs().max() == 448.0


@pytest.mark.parametrize("recipe", RECIPES)
def test_dequantize_operands_matches_per_operand_functions(recipe: str) -> None:
    a, b = torch.randn(70, 260), torch.randn(260, 140)
    qa, sa, qb, sb = quantize_operands(a, b, recipe)
    a_hat, b_hat = dequantize_operands(qa, sa, qb, sb, recipe)
    assert a_hat.dtype == torch.float32 and b_hat.shape == b.shape
    assert (a_hat - a).norm() / a.norm() < 4e-2
    assert (b_hat - b).norm() / b.norm() < 4e-2


def test_bf16_input_is_accepted() -> None:
    x = torch.randn(64, 256).to(torch.bfloat16)
    q, scale = quantize_blockwise_lhs(x)
    assert q.dtype == E4M3 and scale.shape == (64, 2)
