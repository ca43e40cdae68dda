"""LLM.int8(): the decomposition is the float product at threshold 0, plain vector-wise int8 at
an infinite threshold, and sends exactly the outlier columns to float in between."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.errors import InputError
from lowbit.modules import LLMInt8Linear, W8A8Linear
from lowbit.modules.llm_int8_linear import outlier_fractions
from lowbit.modules.w8a8_linear import WEIGHT_SPEC


def layer(threshold: float, seed: int = 0, out_f: int = 24, in_f: int = 40):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(out_f, in_f, generator=g), torch.randn(out_f, generator=g)
    qw = rtn(w, WEIGHT_SPEC)
    return LLMInt8Linear.from_quantized(qw, b, threshold=threshold), W8A8Linear.from_quantized(qw, b), w, b


def inputs(seed: int = 1) -> torch.Tensor:
    """``(2, 5, 40)`` activations around N(0, 1), columns 3 and 17 with values past 6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 40, generator=g).clamp_(-5.5, 5.5)
    x[0, 2, 3], x[1, 4, 17] = 30.0, -12.0
    return x


def test_threshold_zero_is_the_float_product_with_the_dequantized_weight():
    m, _, _, b = layer(0.0)
    x = inputs()
    ref = x.double() @ m.dequantized_weight(torch.float64).t() + b.double()
    assert torch.allclose(m(x).double(), ref, rtol=1e-6, atol=1e-5)
    assert m.outlier_fraction == 1.0


def test_infinite_threshold_is_plain_vector_wise_int8_bit_for_bit():
    m, plain, _, _ = layer(math.inf)
    x = inputs()
    assert torch.equal(m(x), plain(x))
    assert m.outlier_fraction == 0.0


def test_outlier_columns_go_to_float_and_help():
    m, plain, w, b = layer(6.0)
    x = inputs()
    y = m(x)
    assert m.outlier_fraction == pytest.approx(2 / 40)  # columns 3 and 17, one forward
    exact = x.double() @ w.double().t() + b.double()
    err_mixed = (y.double() - exact).norm() / exact.norm()
    err_int8 = (plain(x).double() - exact).norm() / exact.norm()
    # the ±30 outlier stretches token (0, 2)'s int8 grid fivefold; in float it does not
    assert err_mixed < 0.7 * err_int8
    # reference: columns {3, 17} in float against the dequantized weight, the rest int8 per token
    cols = torch.tensor([3, 17])
    regular = x.clone()
    regular[..., cols] = 0
    deq = m.dequantized_weight(torch.float64)
    ref = plain(regular).double() + x[..., cols].double() @ deq[:, cols].t()
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-4)
    assert outlier_fractions(torch.nn.Sequential(m)) == {"0": m.outlier_fraction}
    m.reset_outlier_count()
    assert math.isnan(m.outlier_fraction)


def test_negative_threshold_is_rejected():
    with pytest.raises(InputError, match="threshold"):
        LLMInt8Linear(8, 8, threshold=-1.0)
