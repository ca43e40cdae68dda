"""Double quantization of block scales: nearest dynamic-map codes against float64, layout, bits
per weight, and bitsandbytes' compress_statistics numbers on the same tensor."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.formats import FormatError, FormatSpec
from lowbit.formats.double_quant import DQ_BLOCK, DYNAMIC_MAP, decode_scales, double_quantize, n_dq_blocks

NF4_DQ = FormatSpec(kind="nf", group_size=64, double_quant=True)


@pytest.mark.parametrize("shape", [(576, 9), (7, 5), (3, 256), (1, 1)])
def test_decoded_scales_are_the_nearest_dynamic_map_entries(shape):
    g = torch.Generator().manual_seed(shape[0] * shape[1])
    scale = torch.rand(*shape, generator=g) ** 3 * 0.1 + 1e-3  # positive, skewed like absmaxes
    dq = double_quantize(scale)
    assert dq.codes.dtype == torch.int8 and dq.codes.shape == scale.shape
    assert dq.dq_scale.dtype == torch.float32 and dq.dq_scale.shape == (n_dq_blocks(scale.numel()),)
    assert dq.offset.dtype == torch.float32 and dq.offset.shape == (1,)
    assert float(dq.offset) == pytest.approx(float(scale.double().mean()), rel=1e-6)
    # float64 reference: each block's absmax of the centred scales, and every code the nearest
    # map entry of centred / absmax (ties aside: at most a float32 ulp of the quotient off).
    centred = scale.double().reshape(-1) - dq.offset.double()
    block = torch.arange(scale.numel()) // DQ_BLOCK
    absmax = torch.zeros(n_dq_blocks(scale.numel()), dtype=torch.float64).index_reduce_(
        0, block, centred.abs(), "amax", include_self=False)
    assert torch.allclose(dq.dq_scale.double(), absmax.clamp_min(dq.dq_scale.double().min()), rtol=2 ** -23)
    x = centred / dq.dq_scale.double()[block]
    table = DYNAMIC_MAP.double()
    chosen = table[dq.codes.reshape(-1).long() + 128]
    best = (x[:, None] - table).abs().amin(-1)
    assert ((x - chosen).abs() <= best + 2 ** -22).all()
    # Decoding is MAP[code] · dq_scale + offset in float32.
    exact = (chosen.float() * dq.dq_scale[block] + dq.offset).clamp_min(torch.finfo(torch.float16).tiny)
    assert torch.equal(dq.decode().reshape(-1), exact)
    # The extremes of each block are ±1 · absmax: one of them decodes exactly.
    if scale.numel() > 1:
        assert (chosen.abs() == 1).sum() >= 1


def test_dynamic_map_is_a_sorted_tree_of_decades():
    assert DYNAMIC_MAP.shape == (256,) and DYNAMIC_MAP.dtype == torch.float32
    assert (DYNAMIC_MAP[1:] > DYNAMIC_MAP[:-1]).all()
    assert DYNAMIC_MAP[127] == 0 and DYNAMIC_MAP[-1] == 1 and DYNAMIC_MAP[0] > -1  # 127 negative, 128 positive
    positive = DYNAMIC_MAP[DYNAMIC_MAP > 0]
    # 2^k entries in the decade [10^(k-7), 10^(k-6)) for k = 0..6, then 1.
    for k in range(7):
        lo, hi = 10.0 ** (k - 7), 10.0 ** (k - 6)
        assert int(((positive >= lo) & (positive < hi)).sum()) == 2 ** k


def test_nf4_dq_codes_are_plain_nf4_codes_and_scales_decoded():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(40, 640, generator=g) * 0.02
    qw = rtn(w, NF4_DQ)
    plain = rtn(w, FormatSpec(kind="nf", group_size=64))
    assert torch.equal(qw.codes, plain.codes)  # bitsandbytes' order: codes from the exact absmax
    assert torch.equal(qw.scale, qw.scale_dq.decode())
    err_dq = (qw.dequantize() - w).pow(2).mean()
    err = (plain.dequantize() - w).pow(2).mean()
    assert err_dq <= 1.02 * err


def test_nf4_dq_equals_bitsandbytes_compressed_statistics():
    from test_formats_nf import bnb_functional

    bnb_f = bnb_functional()
    assert torch.equal(DYNAMIC_MAP, bnb_f.create_dynamic_map(signed=True))
    g = torch.Generator().manual_seed(11)
    w = torch.randn(96, 640, generator=g) * 0.05
    w[5, :64] *= 20  # an outlier block: a wide spread of absmaxes
    try:
        packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        ref = bnb_f.dequantize_4bit(packed, state)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"bitsandbytes' quantize_4bit does not run on CPU here: {e}")
    qw = rtn(w, NF4_DQ)
    assert torch.equal(qw.scale_dq.dq_scale, state.state2.absmax)
    assert torch.equal(qw.scale_dq.offset.reshape(()), state.offset.reshape(()))
    ours, theirs = qw.scale_dq.codes.reshape(-1).long() + 128, state.absmax.long()
    # bitsandbytes' CPU kernel finds the map entry by an approximate tree search: a few of its
    # codes are a neighbour of the nearest one. Ours are the nearest: equal or closer, always.
    same = ours == theirs
    assert same.float().mean() > 0.98
    centred = qw.scale_dq.decode().reshape(-1)  # any of ours decodes from its own code; rebuild x:
    block = torch.arange(ours.numel()) // DQ_BLOCK
    absmax = w.reshape(-1, 64).abs().amax(-1)
    x = (absmax - qw.scale_dq.offset) / qw.scale_dq.dq_scale[block]
    assert ((x - DYNAMIC_MAP[ours]).abs() <= (x - DYNAMIC_MAP[theirs]).abs()).all()
    assert torch.equal(centred, qw.scale.reshape(-1))
    # Where the scale codes agree, the dequantized weights are bitsandbytes' own.
    rows_same = same.reshape(w.shape[0], -1).repeat_interleave(64, dim=1)
    # Scales equal bit for bit here; bitsandbytes' kernel decodes and multiplies in its own order
    # (measured: up to ~8 float32 ulps, 4.5e-7 relative), so 1e-6 relative: a wrong level or
    # scale would be off by percents.
    assert torch.allclose(qw.dequantize()[rows_same], ref[rows_same], rtol=1e-6, atol=0)


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
