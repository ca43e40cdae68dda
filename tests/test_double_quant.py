"""Double quantization of block scales: error bound against float64, layout, bits per weight."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.formats import FormatError, FormatSpec
from lowbit.formats.double_quant import DQ_BLOCK, decode_scales, double_quantize, n_dq_blocks

NF4_DQ = FormatSpec(kind="nf", group_size=64, double_quant=True)


@pytest.mark.parametrize("shape", [(576, 9), (7, 5), (3, 256), (1, 1)])
def test_decoded_scales_are_within_half_a_step_of_the_exact_ones(shape):
    g = torch.Generator().manual_seed(shape[0] * shape[1])
    scale = torch.rand(*shape, generator=g) ** 3 * 0.1 + 1e-3  # positive, skewed like absmaxes
    dq = double_quantize(scale)
    assert dq.codes.dtype == torch.int8 and dq.codes.shape == scale.shape
    assert dq.dq_scale.dtype == torch.float32 and dq.dq_scale.shape == (n_dq_blocks(scale.numel()),)
    assert dq.offset.dtype == torch.float32 and dq.offset.shape == (1,)
    assert float(dq.offset) == pytest.approx(float(scale.double().mean()), rel=2 ** -23)
    # float64 reference of the stored numbers: code · dq_scale + offset, exactly.
    step = dq.dq_scale.double().repeat_interleave(DQ_BLOCK)[: scale.numel()].reshape(shape)
    exact = dq.codes.double() * step + dq.offset.double()
    assert ((exact - scale.double()).abs() <= step / 2 * (1 + 1e-9)).all()
    # The float32 decode adds at most two roundings of 2^-24 relative each.
    decoded = dq.decode().double()
    assert ((decoded - exact).abs() <= 2 * 2 ** -24 * (exact.abs() + dq.offset.double().abs())).all()
    # The step is max|centred| / 127 rounded up by less than one float32 ulp, so the largest
    # |centred| value of each block still rounds to ±127: the whole int8 range is used.
    if scale.numel() > 1:
        flat = torch.nn.functional.pad(dq.codes.reshape(-1).int(), (0, (-scale.numel()) % DQ_BLOCK))
        assert (flat.reshape(-1, DQ_BLOCK).abs().amax(-1) == 127).all()


def test_nf4_codes_are_computed_against_the_decoded_scales():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(40, 640, generator=g) * 0.02
    qw = rtn(w, NF4_DQ)
    assert torch.equal(qw.scale, qw.scale_dq.decode())
    plain = rtn(w, FormatSpec(kind="nf", group_size=64))
    # Same weights, plain absmax scales vs their 8-bit versions: the codes match wherever the
    # decoded scale did not move a weight across a midpoint; the error stays close to plain NF4.
    err_dq = (qw.dequantize() - w).pow(2).mean()
    err = (plain.dequantize() - w).pow(2).mean()
    assert err_dq <= 1.05 * err
    assert (qw.codes == plain.codes).float().mean() > 0.97


def test_bits_per_weight_of_nf4_with_double_quant():
    # 4 code bits + 8 bits per 64-block + 32 bits per 256 blocks (QLoRA's 4.127).
    assert NF4_DQ.bits_per_weight(576) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert round(NF4_DQ.bits_per_weight(576), 3) == 4.127


def test_decode_never_returns_a_non_positive_scale():
    codes = torch.tensor([[-127, 0, 127]], dtype=torch.int8)
    out = decode_scales(codes, torch.tensor([1.0]), torch.tensor([0.0]))
    assert (out > 0).all()


@pytest.mark.parametrize("fields,match", [
    ({"kind": "int", "double_quant": True}, "double_quant applies"),
    ({"kind": "nf", "double_quant": True, "scale_dtype": "float16"}, "leave scale_dtype unset"),
    ({"kind": "nf", "double_quant": 1}, "double_quant must be"),
])
def test_bad_double_quant_specs_raise(fields, match):
    with pytest.raises(FormatError, match=match):
        FormatSpec(**fields)


def test_specs_written_before_double_quant_existed_still_read():
    old = {"kind": "int", "bits": 4, "sym": False, "group_size": 64, "scale_dtype": None}
    assert FormatSpec.from_dict(old) == FormatSpec()
    assert NF4_DQ.to_dict()["double_quant"] is True and FormatSpec().to_dict()["double_quant"] is False
