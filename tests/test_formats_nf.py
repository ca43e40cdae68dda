"""NF4: the level table, nearest-level encoding against float64 references, packing, and
bitsandbytes' own quantize_4bit on the same tensor."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.formats import FormatError, FormatSpec, dequantize, pack, quantize
from lowbit.formats.levels import absmax_scale, level_table
from lowbit.formats.nf import nf4_levels

# QLoRA's NF4 table as published (bitsandbytes' backends/utils.py, float32).
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]
NF4 = FormatSpec(kind="nf", bits=4, group_size=64)


def test_levels_equal_the_published_table():
    # The published values are float32 roundings of the same construction (~6e-8 apart) with
    # bitsandbytes' truncated offset 0.9677083: 1e-6 covers both, and catches any wrong quantile.
    levels = nf4_levels()
    assert levels.dtype == torch.float64
    assert torch.allclose(levels, torch.tensor(PUBLISHED_NF4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_levels_have_exact_zero_and_asymmetric_halves():
    levels = nf4_levels()
    assert levels[7] == 0 and levels[0] == -1 and levels[15] == 1
    assert (levels[:7] < 0).all() and (levels[8:] > 0).all()  # 7 negative, 8 positive
    assert (levels.diff() > 0).all()


def nearest_level_reference(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """float64 brute force: index of the closest level, ties to the lower one (argmin's first)."""
    return (x.double().unsqueeze(-1) - levels).abs().argmin(-1)


@pytest.mark.parametrize("shape,group_size", [((7, 192), 64), ((13, 96), 32), ((5, 50), -1), ((3, 40), 0)])
def test_codes_are_the_nearest_levels_of_w_over_absmax(shape, group_size):
    g = torch.Generator().manual_seed(shape[0])
    w = torch.randn(*shape, generator=g) * 0.05
    spec = FormatSpec(kind="nf", group_size=group_size)
    qw = rtn(w, spec)
    assert qw.zero is None and qw.spec.sym
    # Reference: absmax per block in float64, the quotient in float64, then the closest level.
    block = group_size if group_size > 0 else shape[1] if group_size == -1 else w.numel()
    blocks = w.double().reshape(-1, block)
    absmax = blocks.abs().amax(-1, keepdim=True)
    assert torch.equal(qw.scale.double().reshape(-1), absmax.reshape(-1))  # float32 absmax is exact
    expected = nearest_level_reference(blocks / absmax, nf4_levels()).reshape(shape)
    assert torch.equal(qw.codes.long(), expected)


def test_ties_go_to_the_lower_level_and_extremes_are_exact():
    levels = nf4_levels()
    table = level_table("nf")
    mid = (levels[1:] + levels[:-1]) / 2
    assert torch.equal(table.encode(mid).long(), torch.arange(15))  # on a midpoint: the lower level
    assert torch.equal(table.encode(levels).long(), torch.arange(16))  # each level is its own code
    assert table.encode(torch.tensor([-3.0, 3.0])).tolist() == [0, 15]  # outside [-1, 1]: clamps


def test_round_trip_of_values_on_the_grid_is_exact():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, 16, (9, 128), generator=g, dtype=torch.uint8)
    codes[:, ::64] = 15  # every block reaches +1, so its absmax is its scale
    scale = torch.rand(9, 2, generator=g) + 0.5
    w = dequantize(codes, scale, None, NF4)
    assert torch.equal(absmax_scale(w.reshape(9, 2, 64), NF4, torch.float32), scale)
    assert torch.equal(quantize(w, scale, None, NF4), codes)
    assert torch.equal(dequantize(quantize(w, scale, None, NF4), scale, None, NF4), w)


def test_error_is_at_most_half_the_widest_gap_times_the_scale():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(31, 256, generator=g)
    qw = rtn(w, NF4)
    half_gap = float(nf4_levels().diff().max()) / 2
    err = (qw.dequantize(torch.float64) - w.double()).abs().reshape(31, 4, 64)
    bound = half_gap * qw.scale.double().unsqueeze(-1) * (1 + 1e-6)  # float32 level × scale rounding
    assert (err <= bound).all()


def test_all_zero_block_keeps_scale_zero_and_the_zero_code():
    w = torch.randn(2, 128)
    w[1, 64:] = 0
    qw = rtn(w, NF4)
    assert qw.scale[1, 1] == 0 and (qw.codes[1, 64:] == 7).all()
    assert (qw.dequantize()[1, 64:] == 0).all()


def test_packed_codes_sit_two_per_byte_low_nibble_first():
    codes = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    words = pack(codes, 4)
    assert words.dtype == torch.int32 and words.shape == (3, 8)
    as_bytes = words.contiguous().view(torch.uint8)  # little-endian words
    assert torch.equal(as_bytes, codes[:, ::2] | (codes[:, 1::2] << 4))


def test_nf_spec_validates_serialises_and_counts_bits():
    spec = FormatSpec.from_dict({"kind": "nf", "bits": 4, "group_size": 64})
    assert spec.sym and spec.is_lookup and spec.label() == "nf4 g64"
    assert FormatSpec.from_dict(spec.to_dict()) == spec
    assert spec.bits_per_weight(576, scale_bits=32) == 4.5
    with pytest.raises(FormatError, match="nf formats support"):
        FormatSpec(kind="nf", bits=3)


# ---------------------------------------------------------------- bitsandbytes, same tensor

def bnb_functional():
    try:
        import bitsandbytes.functional as bnb_f
    except ImportError:
        pytest.skip("bitsandbytes is not installed (pip install -e '.[test]' or pip install bitsandbytes)")
    except Exception as e:  # a broken native library raises other errors at import
        pytest.skip(f"bitsandbytes does not import here: {type(e).__name__}: {e}")
    return bnb_f


def test_codes_and_absmax_equal_bitsandbytes_quantize_4bit():
    bnb_f = bnb_functional()
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 320, generator=g) * 0.05
    w[3, :64] = 0  # an all-zero block
    w[4, 64:128] = torch.linspace(-1, 1, 64)  # values on both sides of many midpoints
    try:
        packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"bitsandbytes' quantize_4bit does not run on CPU here: {e}")
    # bitsandbytes flattens the tensor into blocks of 64: with in_features a multiple of 64
    # those are our groups of 64 along each row. It packs element 2i in the high nibble.
    b = packed.reshape(-1)
    bnb_codes = torch.stack([b >> 4, b & 15], -1).reshape(w.shape)
    qw = rtn(w, FormatSpec(kind="nf", group_size=64, scale_dtype="float32"))
    assert torch.equal(qw.codes, bnb_codes)
    assert torch.equal(qw.scale.reshape(-1), state.absmax)
