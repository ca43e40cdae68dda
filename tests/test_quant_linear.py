"""QuantLinear: its forward is F.linear with the exactly dequantized weight; buffers as documented."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.algorithms.rtn import ClipSearch, rtn
from lowbit.formats import FormatError, FormatSpec, packed_width
from lowbit.modules import QuantLinear

CASES = [  # (bits, sym, group_size, out_features, in_features)
    (4, False, 32, 37, 96), (4, True, 32, 21, 64), (3, False, 32, 19, 96), (3, True, -1, 13, 71),
    (2, False, -1, 11, 45), (8, True, -1, 29, 33), (8, False, 0, 17, 50), (4, True, 0, 7, 23),
]


def float64_weight(qw) -> torch.Tensor:
    """(q - zero)·scale in float64 from the rounder's own codes and block parameters."""
    spec, (out_f, in_f) = qw.spec, qw.shape
    mid = torch.full_like(qw.scale, 2 ** (spec.bits - 1), dtype=torch.float64)
    zero = qw.zero.double() if qw.zero is not None else mid
    scale = qw.scale.double()
    if spec.group_size > 0:
        zero, scale = (t.repeat_interleave(spec.group_size, dim=1) for t in (zero, scale))
    return (qw.codes.double() - zero.expand(out_f, in_f)) * scale.expand(out_f, in_f)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("bits,sym,group_size,out_f,in_f", CASES)
def test_forward_equals_linear_with_float64_dequantized_weight(bits, sym, group_size, out_f, in_f, bias):
    """float32 forward vs a float64 reference: the dequantized weight is the correctly rounded
    float32 of the exact one (2^-24 relative), and the float32 matmul sums in_f <= 96 products,
    so the error stays below ~in_f·2^-24·Σ|x||w| ≈ 1e-5 of the output scale: rtol/atol 1e-5."""
    g = torch.Generator().manual_seed(bits * 100 + out_f)
    spec = FormatSpec(bits=bits, sym=sym, group_size=group_size)
    w = torch.randn(out_f, in_f, generator=g)
    b = torch.randn(out_f, generator=g) if bias else None
    qw = rtn(w, spec, ClipSearch(grid=5))
    m = QuantLinear.from_quantized(qw, b)

    assert torch.equal(m.codes(), qw.codes)
    back = m.quantized_weight()
    assert torch.equal(back.scale, qw.scale)
    assert (back.zero is None) == sym and (sym or torch.equal(back.zero, qw.zero))

    x = torch.randn(3, 5, in_f, generator=g)
    W64 = float64_weight(qw)
    ref = F.linear(x.double(), W64, None if b is None else b.double())
    y = m(x)
    assert y.shape == (3, 5, out_f) and y.dtype == torch.float32
    scale = ref.abs().max().item()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(m.dequantized_weight(torch.float64), W64, rtol=0, atol=0)
    # The weight really is quantized: it differs from the float one by up to half a step.
    assert not torch.allclose(W64, w.double(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("bits,sym,group_size,out_f,in_f", CASES)
def test_state_dict_keys_shapes_and_dtypes(bits, sym, group_size, out_f, in_f):
    spec = FormatSpec(bits=bits, sym=sym, group_size=group_size)
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    m = QuantLinear.from_quantized(rtn(w, spec), torch.zeros(out_f, dtype=torch.bfloat16))
    sd = m.state_dict()
    rows, groups = (1, 1) if group_size == 0 else (out_f, spec.n_groups(in_f))
    expected = {"weight_packed": ((out_f, packed_width(in_f, bits)), torch.int32),
                "weight_scale": ((rows, groups), torch.bfloat16),  # the model's dtype
                "bias": ((out_f,), torch.bfloat16)}
    if not sym:
        expected["weight_zero"] = ((rows, groups), torch.int32)
    assert set(sd) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert tuple(sd[k].shape) == shape and sd[k].dtype == dtype, k
    if not sym:  # zeros are unsigned codes
        assert 0 <= int(sd["weight_zero"].min()) and int(sd["weight_zero"].max()) <= 2**bits - 1

    # A fresh module loads the state dict and computes the same thing.
    fresh = QuantLinear(in_f, out_f, spec, bias=True, dtype=torch.bfloat16)
    fresh.load_state_dict(sd)
    x = torch.randn(4, in_f, dtype=torch.bfloat16)
    assert torch.equal(fresh(x), m(x))


def test_without_bias_has_no_bias_buffer_and_matches_reference():
    spec = FormatSpec(bits=4, sym=False, group_size=32)
    qw = rtn(torch.randn(9, 64), spec)
    m = QuantLinear.from_quantized(qw)
    assert m.bias is None and "bias" not in m.state_dict()
    x = torch.randn(2, 64)
    torch.testing.assert_close(m(x).double(), x.double() @ float64_weight(qw).t(), rtol=1e-5, atol=1e-5)


def test_bfloat16_forward_matches_reference_within_bfloat16_rounding():
    """bf16 in, bf16 out: the output is rounded to 8 mantissa bits (2^-8 relative), and the
    bf16 weight/activations add about as much again: 2e-2 relative to the output scale."""
    spec = FormatSpec(bits=4, sym=True, group_size=32)
    w = torch.randn(24, 96).to(torch.bfloat16)
    qw = rtn(w, spec)
    m = QuantLinear.from_quantized(qw)
    x = torch.randn(6, 96).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    ref = x.double() @ float64_weight(qw).t()
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_group_that_does_not_fit_raises_format_error():
    with pytest.raises(FormatError, match="100.*64"):
        QuantLinear(100, 8, FormatSpec(group_size=64))


def test_extra_repr_names_the_format():
    m = QuantLinear(64, 8, FormatSpec(bits=3, sym=True, group_size=32))
    assert "int3 sym g32" in repr(m) and "in_features=64" in repr(m)


def test_float16_scales_with_a_bias_run_on_float32_inputs():
    """Regression: a float16-scale QuantLinear stored its bias in float16 and F.linear refused a
    float32 input; the output must equal the float32 dequantized product plus the bias."""
    from lowbit.algorithms.rtn import rtn

    g = torch.Generator().manual_seed(3)
    w, b, x = torch.randn(6, 32, generator=g), torch.randn(6, generator=g), torch.randn(3, 32, generator=g)
    spec = FormatSpec(bits=4, sym=False, group_size=16, scale_dtype="float16")
    q = QuantLinear.from_quantized(rtn(w, spec), bias=b)
    ref = x.double() @ q.dequantized_weight(torch.float64).t() + q.bias.double()
    torch.testing.assert_close(q(x).double(), ref, rtol=1e-5, atol=1e-5)
