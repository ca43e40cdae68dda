"""FP8 E4M3 W8A8: the emulation rounds exactly as a reference E4M3 cast, and the layer computes
what ``torch._scaled_mm`` computes from the same codes."""
from __future__ import annotations

import math

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.formats.fp8 import E4M3_MAX, FP8_ROWS, to_fp8
from lowbit.kernels.activations import fp8_per_token
from lowbit.modules import FP8Linear


def reference_e4m3(v: float) -> float:
    """Round a float to E4M3 (bias 7, 3 mantissa bits, subnormals, no infinities) with ties to
    even, saturating at ±448: the rule the GPU conversion follows, written out in float64."""
    if v == 0 or math.isnan(v):
        return v
    a = min(abs(v), E4M3_MAX)
    e = max(math.floor(math.log2(a)), -6)  # below 2^-6 the spacing stays 2^-9 (subnormals)
    step = 2.0 ** (e - 3)
    n = a / step
    r = math.floor(n)
    if n - r > 0.5 or (n - r == 0.5 and r % 2 == 1):
        r += 1
    return math.copysign(min(r * step, E4M3_MAX), v)


def hard_values() -> torch.Tensor:
    """Random magnitudes over E4M3's whole range, exact ties between neighbours, subnormals,
    values past 448, and zeros."""
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(3000, generator=g) * torch.exp2(torch.randint(-12, 10, (3000,), generator=g).float())
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].unique()
    ties = (grid[1:] + grid[:-1]) / 2
    return torch.cat([rand, ties, -ties, grid, torch.tensor([0.0, 447.9, 448.0, 464.0, 500.0, -1e6, 1e-7])])


def test_cast_matches_a_reference_e4m3_rounding():
    v = hard_values()
    ours = to_fp8(v, torch.tensor(1.0)).float()
    ref = torch.tensor([reference_e4m3(float(x)) for x in v])
    assert torch.equal(ours, ref)


def test_dynamic_per_token_codes_are_the_cast_of_x_over_its_row_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 48, generator=g) * torch.logspace(-3, 3, 7).unsqueeze(1)
    x[3, 5] = 900.0  # an outlier sets its row's scale
    q, scale = fp8_per_token(x)
    assert torch.allclose(scale.squeeze(1), x.abs().amax(1) / 448, rtol=1e-7)
    quotient = (x / scale).tolist()
    ref = torch.tensor([[reference_e4m3(v) for v in row] for row in quotient])
    assert torch.equal(q.float(), ref)
    assert torch.all(q.float().abs().amax(1) == 448)  # each row's absmax lands on the top level


def test_weight_codes_are_the_cast_of_w_over_its_row_scale():
    """The fp8 format's table rounds like the cast (but on exact midpoints, none here)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 80, generator=g) * torch.linspace(0.01, 3, 24).unsqueeze(1)
    qw = rtn(w, FP8_ROWS)
    assert qw.scale.shape == (24, 1) and torch.allclose(qw.scale, w.abs().amax(1, keepdim=True) / 448)
    cast = (w.double() / qw.scale.double()).to(torch.float8_e4m3fn)
    assert torch.equal(qw.codes, cast.view(torch.uint8))
    deq = qw.dequantize(torch.float64)
    assert torch.equal(deq, cast.double() * qw.scale.double())
    # E4M3 keeps 3 mantissa bits: relative error at most 2^-4 for normal values
    normal = w.abs() >= qw.scale * 2.0 ** -6
    assert torch.all(((deq - w.double()).abs() <= w.abs() * 2.0 ** -4)[normal])


@pytest.mark.parametrize("static", [False, True])
def test_linear_equals_scaled_mm_on_the_same_codes(static):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(40, 64, generator=g), torch.randn(40, generator=g)
    x = torch.randn(2, 9, 64, generator=g)
    input_scale = x.abs().max().reshape(1) / 448 if static else None
    m = FP8Linear.from_quantized(rtn(w, FP8_ROWS), b, input_scale=input_scale)
    y = m(x)
    q, sx = fp8_per_token(x.reshape(-1, 64), m.input_scale)
    ref = torch._scaled_mm(q, m.weight_codes.t(), sx.contiguous(), m.weight_scale.reshape(1, -1),
                           out_dtype=torch.float32) + b
    assert torch.allclose(y.reshape(-1, 40), ref, rtol=1e-5, atol=1e-5)
    # and against the float layer: E4M3 on both sides, ~3% of the output's scale
    exact = x.double() @ w.double().t() + b.double()
    assert (y.double() - exact).norm() / exact.norm() < 0.05
