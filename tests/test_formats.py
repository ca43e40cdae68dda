"""Integer formats against an independent float64 reference (numpy), on fresh odd-shaped inputs.

The reference below re-derives scale, zero and codes from the documented formulas:
  sym:  scale = 2·max(|min|, |max|) / qmax, zero = 2^(bits-1) (implicit)
  asym: scale = (max - min) / qmax,         zero = round(-min / scale)
with the block range widened to include 0, the scale rounded *up* to its storage dtype, and
codes = clamp(round(w / scale) + zero, 0, qmax). float64 holds every float32 quotient's
rounding exactly (see test_float64_reference_gives_bit_identical_codes), so codes must match
bit for bit, and the error bound |w - ŵ| <= scale/2 holds with no tolerance at all.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lowbit.errors import InputError, LowbitError
from lowbit.formats import (
    FormatError, FormatSpec, dequantize, qparams_from_range, quantize, to_blocks,
)
from lowbit.formats.integer import block_range, store_scale

BITS = (2, 3, 4, 8)
# (group_size, out_features, in_features): odd out sizes; in sizes that split into groups.
GRANULARITIES = {"tensor": (0, 37, 83), "channel": (-1, 29, 71), "group": (32, 23, 96)}


def random_weight(out_f: int, in_f: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Gaussian rows of different magnitudes, a few outliers, some exact zeros, a constant row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * torch.rand(out_f, 1, generator=g).add(0.05)
    outliers = torch.rand(out_f, in_f, generator=g) < 0.01
    w = torch.where(outliers, w * 8, w)
    w[torch.rand(out_f, in_f, generator=g) < 0.03] = 0.0
    w[0] = 0.0          # an all-zero row (and block): scale must not be 0 or NaN
    w[-1, : in_f // 2] = 0.37  # part of a row constant and positive: its range must include 0
    return w.to(dtype)


# ---------------------------------------------------------------- independent float64 reference
def ceil_to_dtype(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Smallest value of ``dtype`` >= x (x > 0, float64), computed without torch."""
    if dtype == torch.float64:
        return x
    if dtype == torch.float16:
        y = x.astype(np.float16)
        return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float16(np.inf)), y).astype(np.float64)
    f32 = x.astype(np.float32)
    f32 = np.where(f32.astype(np.float64) < x, np.nextafter(f32, np.float32(np.inf)), f32).astype(np.float32)
    if dtype == torch.float32:
        return f32.astype(np.float64)
    assert dtype == torch.bfloat16
    # bfloat16 is the top 16 bits of a float32: round the float32 up to the next such value.
    u = f32.view(np.uint32).astype(np.uint64)
    u = np.where(u & 0xFFFF, (u & 0xFFFF0000) + 0x10000, u).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


def reference_quantize(w: torch.Tensor, bits: int, sym: bool, group_size: int, dtype: torch.dtype):
    """float64 numpy: (codes (out, in), scale (rows, n), zero (rows, n)) as the formulas define."""
    w64 = w.double().numpy()
    out_f, in_f = w64.shape
    if group_size > 0:
        blocks = w64.reshape(out_f, in_f // group_size, group_size)
    elif group_size == -1:
        blocks = w64.reshape(out_f, 1, in_f)
    else:
        blocks = w64.reshape(1, 1, -1)
    qmax = 2**bits - 1
    lo = np.minimum(blocks.min(-1), 0.0)
    hi = np.maximum(blocks.max(-1), 0.0)
    tiny = 2.0**-14  # smallest normal float16: the floor for an all-zero block
    if sym:
        scale = ceil_to_dtype(np.maximum(2 * np.maximum(-lo, hi) / qmax, tiny), dtype)
        zero = np.full(scale.shape, 2.0 ** (bits - 1))
    else:
        scale = ceil_to_dtype(np.maximum((hi - lo) / qmax, tiny), dtype)
        zero = np.clip(np.round(-lo / scale), 0, qmax)
    codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, qmax)
    return codes.reshape(out_f, in_f), scale, zero


def lowbit_quantize(w: torch.Tensor, spec: FormatSpec):
    lo, hi = block_range(w, spec)
    dtype = {None: w.dtype, "float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[spec.scale_dtype]
    scale, zero = qparams_from_range(lo, hi, spec, dtype)
    return quantize(w, scale, zero, spec), scale, zero


def expand(params: np.ndarray, spec: FormatSpec, shape) -> np.ndarray:
    """Block parameters ``(rows, n)`` broadcast to every weight ``(out, in)``."""
    out_f, in_f = shape
    if spec.group_size > 0:
        return np.repeat(params, spec.group_size, axis=1)
    return np.broadcast_to(params, (out_f, in_f)) if spec.group_size == 0 else np.repeat(params, in_f, axis=1)


# ---------------------------------------------------------------- the cases
@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_float64_reference_gives_bit_identical_codes(bits, sym, granularity):
    group_size, out_f, in_f = GRANULARITIES[granularity]
    spec = FormatSpec(bits=bits, sym=sym, group_size=group_size, scale_dtype="float32")
    for seed in range(3):
        w = random_weight(out_f, in_f, seed=100 * bits + seed)
        codes, scale, zero = lowbit_quantize(w, spec)
        ref_codes, ref_scale, ref_zero = reference_quantize(w, bits, sym, group_size, torch.float32)

        assert codes.dtype == torch.uint8 and codes.shape == w.shape
        assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
        rows = 1 if group_size == 0 else out_f
        assert scale.shape == (rows, spec.n_groups(in_f)) and scale.dtype == torch.float32
        np.testing.assert_array_equal(scale.double().numpy(), ref_scale)
        if sym:
            assert zero is None
        else:
            assert zero.dtype == torch.int32
            np.testing.assert_array_equal(zero.numpy(), ref_zero)
        np.testing.assert_array_equal(codes.numpy(), ref_codes)


@pytest.mark.parametrize("granularity", sorted(GRANULARITIES))
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_error_is_at_most_half_a_step(bits, sym, granularity):
    """Every weight lies inside its block's range, so |w - ŵ| <= scale/2 exactly (no tolerance).

    The dequantized weight is formed in float64 from the codes and the *stored* scale:
    (q - zero)·scale is exact there (8-bit integer times a 24-bit mantissa).
    """
    group_size, out_f, in_f = GRANULARITIES[granularity]
    spec = FormatSpec(bits=bits, sym=sym, group_size=group_size)
    w = random_weight(out_f, in_f, seed=7 + bits)
    codes, scale, zero = lowbit_quantize(w, spec)
    zero_np = np.full(scale.shape, 2.0 ** (bits - 1)) if zero is None else zero.double().numpy()
    s = expand(scale.double().numpy(), spec, w.shape)
    w_hat = (codes.double().numpy() - expand(zero_np, spec, w.shape)) * s
    err = np.abs(w.double().numpy() - w_hat)
    assert (err <= s / 2).all(), f"worst error {np.max(err / s):.6f} steps"
    # The library's own dequantize gives the same weights (float32 rounding of exact values).
    np.testing.assert_allclose(dequantize(codes, scale, zero, spec).double().numpy(), w_hat,
                               rtol=2**-24, atol=0)
    # And the bound is not vacuous: somewhere the error is a sizeable part of a step.
    assert np.max(err / s) > 0.4


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_zero_is_exactly_representable(bits, sym):
    """Padding and pruned weights must stay exactly 0 after a round trip (asym: zero is an integer)."""
    spec = FormatSpec(bits=bits, sym=sym, group_size=32)
    w = random_weight(19, 64, seed=bits) + 0.3  # shifted: most blocks' ranges exclude 0
    w[torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.2] = 0.0
    codes, scale, zero = lowbit_quantize(w, spec)
    w_hat = dequantize(codes, scale, zero, spec, torch.float64)
    assert (w_hat[w == 0] == 0).all()
    assert (w == 0).sum() > 10


@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16", "float32", None])
@pytest.mark.parametrize("bits,sym", [(8, True), (8, False), (4, False), (3, True), (2, False)])
def test_scales_stored_in_requested_dtype_and_codes_match_stored_scale(bits, sym, scale_dtype):
    """Codes are computed from the rounded (stored) scale, never from the float32 one, and the
    half-step bound survives half-precision storage because the scale is rounded up."""
    spec = FormatSpec(bits=bits, sym=sym, group_size=-1, scale_dtype=scale_dtype)
    w = random_weight(41, 57, seed=3, dtype=torch.bfloat16 if scale_dtype is None else torch.float32)
    codes, scale, zero = lowbit_quantize(w, spec)
    expected = {None: torch.bfloat16, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float32": torch.float32}[scale_dtype]
    assert scale.dtype == expected
    ref_codes, ref_scale, ref_zero = reference_quantize(w, bits, sym, -1, expected)
    np.testing.assert_array_equal(scale.double().numpy(), ref_scale)
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    if not sym:
        np.testing.assert_array_equal(zero.numpy(), ref_zero)
    s = np.repeat(ref_scale, 57, axis=1)
    w_hat = (ref_codes - np.repeat(ref_zero, 57, axis=1)) * s
    assert (np.abs(w.double().numpy() - w_hat) <= s / 2).all()


def test_store_scale_rounds_up_to_the_nearest_representable_value():
    x = torch.tensor([1.0, 1.0 + 2**-12, 0.1, 3e-5, 1234.5678], dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        stored = store_scale(x, dtype)
        assert stored.dtype == dtype
        np.testing.assert_array_equal(stored.double().numpy(), ceil_to_dtype(x.numpy(), dtype))
        below = torch.nextafter(stored, torch.zeros_like(stored)).double()
        assert (stored.double() >= x).all() and (below < x).all()


def test_per_tensor_uses_one_scale_for_the_whole_matrix():
    spec = FormatSpec(bits=4, sym=False, group_size=0)
    w = random_weight(13, 27, seed=5)
    codes, scale, zero = lowbit_quantize(w, spec)
    assert scale.shape == (1, 1) and zero.shape == (1, 1)
    assert float(scale) == pytest.approx(float(w.max() - min(float(w.min()), 0.0)) / 15, rel=1e-6)
    assert to_blocks(w, spec).shape == (1, 1, 13 * 27)


# ---------------------------------------------------------------- errors
def test_group_size_not_dividing_in_features_names_the_layer_and_sizes():
    spec = FormatSpec(bits=4, group_size=128)
    with pytest.raises(FormatError) as e:
        spec.check_fits(1536, 576, name="model.layers.3.mlp.down_proj")
    msg = str(e.value)
    assert "model.layers.3.mlp.down_proj" in msg and "576" in msg and "128" in msg
    assert "\n" not in msg
    # 576 = 2^6·9: the hint offers group sizes that do divide it.
    assert "64" in msg and "192" in msg
    with pytest.raises(FormatError, match="100.*64"):
        to_blocks(torch.zeros(3, 100), FormatSpec(group_size=64))
    assert issubclass(FormatError, InputError) and issubclass(FormatError, LowbitError)


@pytest.mark.parametrize("bits", [1, 5, 6, 7, 16, 0, -4, 4.0, "4", True, None])
def test_unsupported_bits_raise_format_error(bits):
    with pytest.raises(FormatError, match="bits"):
        FormatSpec(bits=bits)


@pytest.mark.parametrize("group_size", [-2, -64, 1.5, 64.0, "64", True, None])
def test_bad_group_sizes_raise_format_error(group_size):
    with pytest.raises(FormatError, match="group size"):
        FormatSpec(group_size=group_size)


@pytest.mark.parametrize("fields", [{"kind": "float"}, {"sym": "false"}, {"scale_dtype": "float8"}])
def test_other_bad_fields_raise_format_error(fields):
    with pytest.raises(FormatError):
        FormatSpec(**fields)


# ---------------------------------------------------------------- plain data
@pytest.mark.parametrize("spec", [
    FormatSpec(), FormatSpec(bits=3, sym=True, group_size=-1), FormatSpec(bits=8, group_size=0),
    FormatSpec(bits=2, group_size=32, scale_dtype="bfloat16"), FormatSpec(bits=4, scale_dtype="float32"),
])
def test_spec_round_trips_through_dict_and_json(spec):
    d = spec.to_dict()
    assert d == {"kind": "int", "bits": spec.bits, "sym": spec.sym, "group_size": spec.group_size,
                 "scale_dtype": spec.scale_dtype, "double_quant": False}
    assert FormatSpec.from_dict(d) == spec
    assert FormatSpec.from_dict(json.loads(json.dumps(d))) == spec


def test_spec_from_dict_rejects_unknown_fields_and_fills_defaults():
    with pytest.raises(FormatError, match="groupsize"):
        FormatSpec.from_dict({"bits": 4, "groupsize": 64})
    assert FormatSpec.from_dict({"bits": 8}) == FormatSpec(bits=8)


def test_bits_per_weight():
    # int4 asym g64, 16-bit scale: 4 code bits + (16 scale + 4 zero bits) / 64 weights.
    assert FormatSpec(bits=4, sym=False, group_size=64).bits_per_weight(576) == 4 + 20 / 64
    assert FormatSpec(bits=4, sym=True, group_size=128).bits_per_weight(4096) == 4 + 16 / 128
    assert FormatSpec(bits=3, sym=False, group_size=64).bits_per_weight(576, scale_bits=32) == 3 + 35 / 64
    assert FormatSpec(bits=8, sym=True, group_size=-1).bits_per_weight(576) == 8 + 16 / 576
    # Per-tensor: one scale and zero for the whole matrix.
    assert FormatSpec(bits=2, sym=False, group_size=0).bits_per_weight(64, out_features=32) == 2 + 18 / 2048


def test_spec_labels_and_granularity():
    assert FormatSpec(bits=4, sym=False, group_size=64).label() == "int4 asym g64"
    assert FormatSpec(bits=8, sym=True, group_size=-1).granularity == "channel"
    assert FormatSpec(bits=8, sym=True, group_size=0).label() == "int8 sym per-tensor"
    assert FormatSpec(bits=3).qmax == 7 and FormatSpec(bits=8).qmax == 255
