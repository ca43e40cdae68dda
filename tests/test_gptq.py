"""GPTQ numerics on single matrices: exact identities, a float64 reference, and GPTQ beating RTN."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.gptq import GPTQParams, HessianAccumulator, HessianError, gptq, output_error
from lowbit.algorithms.gptq_step import GPTQConfig
from lowbit.algorithms.registry import rounder_for
from lowbit.algorithms.rtn import ClipSearch, rtn
from lowbit.formats import FormatSpec
from lowbit.formats.integer import qparams_from_range
from lowbit.modules import QuantLinear
from lowbit.recipes import load_preset

SPECS = [
    FormatSpec(bits=4, sym=False, group_size=32),
    FormatSpec(bits=3, sym=True, group_size=32),
    FormatSpec(bits=2, sym=False, group_size=32),
    FormatSpec(bits=8, sym=True, group_size=-1),
]


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``(n, d)`` inputs with strongly correlated channels and uneven magnitudes (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    x = torch.randn(n, d, generator=g) @ mix
    x[:, torch.randperm(d, generator=g)[: d // 8]] *= 8  # a few outlier channels
    return x


def weights(out_f: int, in_f: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * 0.05


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[-1])
    acc.add_batch(x)
    return acc.hessian()


def gptq_reference_f64(W, H, spec, damp=0.01):
    """Textbook GPTQ in float64: explicit inverse, one column at a time (no Cholesky, no lazy
    batches), dynamic groups set from the updated weights when a group starts."""
    W = W.double().clone()
    H = H.double().clone()
    out_f, in_f = W.shape
    H += damp * torch.diag(H).mean() * torch.eye(in_f, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    group = spec.group_size if spec.group_size > 0 else in_f
    codes = torch.zeros(out_f, in_f, dtype=torch.float64)
    for j in range(in_f):
        if j % group == 0:
            blk = W[:, j:j + group]
            scale, zero = qparams_from_range(blk.amin(1), blk.amax(1), spec, torch.float32)
            s = scale.double()
            z = zero.double() if zero is not None else torch.full_like(s, 1 << (spec.bits - 1))
        q = torch.clamp(torch.round(W[:, j] / s) + z, 0, spec.qmax)
        codes[:, j] = q
        err = (W[:, j] - (q - z) * s) / Hinv[j, j]
        W[:, j + 1:] -= err[:, None] * Hinv[j, j + 1:][None, :]
        # Remove column j from the problem (Gaussian elimination on the inverse).
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]
    return codes


def test_hessian_accumulator_matches_float64_over_uneven_batches():
    x = correlated_inputs(300, 40)
    acc = HessianAccumulator(40)
    for chunk in torch.split(x, [7, 128, 100, 65]):
        acc.add_batch(chunk.reshape(1, -1, 40))  # (batch, seq, in) is flattened
    ref = 2 * x.double().t() @ x.double() / 300
    assert acc.n == 300
    torch.testing.assert_close(acc.hessian().double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
def test_identity_hessian_gives_rtn_exactly(spec):
    W = weights(48, 96)
    qw = gptq(W, torch.eye(96), spec, GPTQParams(block_size=40))
    ref = rtn(W, spec)
    assert torch.equal(qw.codes, ref.codes)
    assert torch.equal(qw.scale, ref.scale)
    assert (qw.zero is None) == (ref.zero is None)
    if ref.zero is not None:
        assert torch.equal(qw.zero, ref.zero)


def test_identity_hessian_with_clip_search_gives_rtn_with_the_same_search():
    spec, clip = FormatSpec(bits=4, group_size=32), ClipSearch(grid=10, min_ratio=0.6)
    W = weights(32, 64)
    qw = gptq(W, torch.eye(64), spec, GPTQParams(clip=clip))
    assert torch.equal(qw.codes, rtn(W, spec, clip).codes)


@pytest.mark.parametrize("spec", SPECS[:3], ids=lambda s: s.label())
def test_matches_float64_reference(spec):
    x = correlated_inputs(512, 96, seed=3)
    W, H = weights(24, 96, seed=4), hessian_of(x)
    # Small lazy blocks so that the deferred updates cross several block boundaries.
    qw = gptq(W, H, spec, GPTQParams(block_size=32))
    ref = gptq_reference_f64(W, H, spec)
    agree = (qw.codes.double() == ref).double().mean().item()
    # Rounding ties may flip a handful of codes between float32 and float64, never many.
    assert agree > 0.99, agree


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
@pytest.mark.parametrize("act_order", [False, True])
def test_output_error_below_rtn_on_correlated_inputs(spec, act_order):
    x = correlated_inputs(2048, 128)
    W, H = weights(64, 128), hessian_of(x)
    if spec.bits == 2 and not act_order:
        # Measured 1.09× RTN: in input order, 2-bit groups cannot absorb the error pushed from
        # the outlier channels; act-order rounds those first (0.67×). Not a claim worth making.
        pytest.skip("2-bit GPTQ needs act-order on inputs with outlier channels")
    qw = gptq(W, H, spec, GPTQParams(act_order=act_order))
    q_rtn = rtn(W, spec)
    err_gptq = torch.linalg.norm((W - qw.dequantize()) @ x.t())
    err_rtn = torch.linalg.norm((W - q_rtn.dequantize()) @ x.t())
    # Measured ratios: 0.81-0.86 in input order, 0.53-0.67 with act-order.
    assert err_gptq < (0.75 if act_order else 0.9) * err_rtn, (err_gptq, err_rtn)
    # The reported proxy error is the mean squared output error per input.
    assert qw.stats["proxy_err"] == pytest.approx((err_gptq**2 / 2048).item(), rel=1e-3)


@pytest.mark.parametrize("sym", [False, True])
def test_act_order_static_groups_give_a_valid_quant_linear(sym):
    spec = FormatSpec(bits=4, sym=sym, group_size=32)
    x = correlated_inputs(1024, 96, seed=5)
    W, H = weights(40, 96, seed=6), hessian_of(x)
    qw = gptq(W, H, spec, GPTQParams(act_order=True))
    # Static groups: every group's params come from the original weights, as RTN's do, so the
    # checkpoint stores contiguous groups and needs no g_idx.
    ref = rtn(W, spec)
    assert torch.equal(qw.scale, ref.scale)
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= spec.qmax
    layer = QuantLinear.from_quantized(qw)
    torch.testing.assert_close(layer.dequantized_weight(torch.float32), qw.dequantize())
    torch.testing.assert_close(layer(x[:8]), x[:8] @ qw.dequantize().t())


def test_dead_inputs_get_zero_weights():
    x = correlated_inputs(512, 64)
    x[:, [3, 40]] = 0
    W, H = weights(16, 64), hessian_of(x)
    qw = gptq(W, H, FormatSpec(bits=4, group_size=32), GPTQParams())
    assert qw.stats["dead_inputs"] == 2
    assert torch.all(qw.dequantize()[:, [3, 40]] == 0)


def test_indefinite_hessian_is_retried_with_more_damping():
    # One eigenvalue at -0.05 × the mean diagonal: damp 0.01 fails, 0.1 succeeds.
    n = 64
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    H = torch.eye(n) - 1.05 * torch.outer(v, v)
    qw = gptq(weights(8, n), H, FormatSpec(bits=4, group_size=32), GPTQParams(damp=0.01))
    assert qw.stats["damp"] == pytest.approx(0.1)


def test_hopeless_hessian_fails_naming_the_layer():
    H = -torch.eye(32)
    with pytest.raises(HessianError, match="model.layers.3.mlp.down_proj"):
        gptq(weights(8, 32), H, FormatSpec(bits=4, group_size=32), GPTQParams(damp_retries=2),
             name="model.layers.3.mlp.down_proj")
    H = torch.eye(32)
    H[0, 0] = float("nan")
    with pytest.raises(HessianError):
        gptq(weights(8, 32), H, FormatSpec(bits=4, group_size=32), name="w")


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = GPTQConfig(damp=0.05, act_order=False, clip=ClipSearch(grid=8))
    assert GPTQConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTQConfig.from_dict({"method": "gptq"}) == GPTQConfig()
    no_clip = GPTQConfig(clip=None)
    assert GPTQConfig.from_dict(no_clip.to_dict()) == no_clip
    assert GPTQConfig.from_dict({"method": "gptq", "clip": None}).clip is None
    with pytest.raises(ValueError, match="unknown"):
        GPTQConfig.from_dict({"method": "gptq", "dampening": 0.1})
    with pytest.raises(ValueError):
        GPTQConfig(damp=0)
    entry = rounder_for("gptq")
    assert entry.needs_calibration and entry.config_type is GPTQConfig


@pytest.mark.parametrize("name,bits,group,sym", [
    ("w4a16-gptq", 4, 64, False), ("w3a16-gptq", 3, 64, False), ("w8a16-gptq", 8, -1, True)])
def test_presets(name, bits, group, sym):
    r = load_preset(name)
    assert (r.format.bits, r.format.group_size, r.format.sym) == (bits, group, sym)
    assert isinstance(r.rounder, GPTQConfig) and r.needs_calibration


def test_scale_dtype_follows_the_weight():
    x = correlated_inputs(256, 64)
    W = weights(16, 64).to(torch.bfloat16)
    qw = gptq(W, hessian_of(x), FormatSpec(bits=4, group_size=32))
    assert qw.scale.dtype == torch.bfloat16
    assert output_error(W, qw.dequantize(), hessian_of(x)) == pytest.approx(qw.stats["proxy_err"])


@pytest.mark.parametrize("width", [130, 200, 576, 1000])
def test_hessian_upper_triangle_blocks_match_float64_at_widths_that_leave_a_thin_last_block(width):
    x = correlated_inputs(256, width, seed=7)
    acc = HessianAccumulator(width)
    for chunk in torch.split(x, [100, 156]):
        acc.add_batch(chunk)
    ref = 2 * x.double().t() @ x.double() / 256
    H = acc.hessian().double()
    assert torch.equal(H, H.t())  # mirrored exactly
    torch.testing.assert_close(H, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def clipped_to_ratio(W: torch.Tensor, spec: FormatSpec, ratio: float) -> torch.Tensor:
    """``W`` with every group clamped to ``ratio`` of its [min, max] (what AWQ's clip search does)."""
    blocks = W.reshape(W.shape[0], -1, spec.group_size)
    lo, hi = blocks.amin(-1, keepdim=True) * ratio, blocks.amax(-1, keepdim=True) * ratio
    return torch.maximum(torch.minimum(blocks, hi), lo).reshape(W.shape)


def test_a_range_weight_fixes_the_group_ranges_and_its_clipping_error_is_compensated():
    spec = FormatSpec(bits=3, sym=False, group_size=32)
    x = correlated_inputs(1024, 128, seed=5)
    H = hessian_of(x)
    W = weights(48, 128, seed=6)
    W[:, ::17] *= 6  # outlier weights that a clip search would cut
    R = clipped_to_ratio(W, spec, 0.7)
    params = GPTQParams(act_order=True, static_groups=True)
    ranged = gptq(W, H, spec, params, range_weight=R)
    # The groups' scale and zero are those of the clipped weights (RTN's min-max of R) ...
    ref = rtn(R, spec)
    assert torch.equal(ranged.scale, ref.scale) and torch.equal(ranged.zero, ref.zero)
    # ... while the target stays W: rounding the clamped copy instead (what clipping in place
    # did) leaves the clipping error uncompensated, so its output error against W is larger.
    clamped = gptq(R, H, spec, params)
    err = lambda q: output_error(W, q.dequantize(torch.float32), H)
    assert err(ranged) < 0.9 * err(clamped)
    # A range weight equal to W changes nothing; without static groups it becomes the target.
    same = gptq(W, H, spec, params, range_weight=W.clone())
    assert torch.equal(same.codes, gptq(W, H, spec, params).codes)
    dynamic = GPTQParams(act_order=False, static_groups=False)
    assert torch.equal(gptq(W, H, spec, dynamic, range_weight=R).codes, gptq(R, H, spec, dynamic).codes)
    with pytest.raises(Exception, match="range weight shape"):
        gptq(W, H, spec, params, range_weight=R[:, :64])
