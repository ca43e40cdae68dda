"""AWQ: the scale and clip searches on one matrix, folding on every architecture, the recipes."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

import tiny_models
from lowbit import FormatSpec, Recipe, load_preset, quantize_model
from lowbit.algorithms.awq import (
    candidate_scale, fake_quantize, gram_loss, search_clip, search_scales, weight_magnitude,
)
from lowbit.algorithms.awq_step import AWQConfig
from lowbit.algorithms.rtn import ClipSearch, rtn
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.arch import arch_for, blocks_of, get_module
from lowbit.errors import InputError
from lowbit.io import load, save
from lowbit.modules import QuantLinear
from lowbit.pipeline import calibration_batches, capture_block_inputs, run_block
from lowbit.pipeline.awq_block import awq_block
from lowbit.pipeline.folding import channel_tie, fold_scale
from lowbit.pipeline.transforms import BlockContext
from lowbit.quantize import find_targets
from lowbit.recipes.build import build_recipe

W4 = FormatSpec(bits=4, sym=False, group_size=32)


# ---------------------------------------------------------------- one matrix


def planted_layer(seed: int = 0, out_f: int = 48, in_f: int = 128, n: int = 4096):
    """A linear whose inputs have three salient channels (mean |x| ~40x the others)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * 0.05
    x = torch.randn(n, in_f, generator=g, dtype=torch.float64)
    salient = torch.tensor([5, 61, 100])
    x[:, salient] *= 40
    return w, x, salient


def token_loss(x: torch.Tensor, w: torch.Tensor):
    """Mean squared output error measured on the tokens themselves, in float64."""
    return lambda w_hat: float(((x @ (w_hat.double() - w).t()) ** 2).mean())


NF4 = FormatSpec(kind="nf", bits=4, group_size=32)
NF4_DQ = FormatSpec(kind="nf", bits=4, group_size=32, double_quant=True)


@pytest.mark.parametrize("spec", [W4, FormatSpec(bits=3, sym=True, group_size=-1), FormatSpec(bits=4, group_size=0),
                                  NF4, NF4_DQ, FormatSpec(kind="fp", bits=4, group_size=32)])
def test_fake_quantize_is_rtn_without_clipping(spec):
    w = torch.randn(37, 96, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fake_quantize(w, spec), rtn(w, spec, None).dequantize(torch.float32))


def test_gram_loss_is_the_token_loss():
    w, x, _ = planted_layer()
    delta = torch.randn(w.shape, dtype=torch.float64) * 1e-3
    gram = (x.t() @ x / x.shape[0]).float()
    exact = float(((x @ delta.t()) ** 2).mean())
    # float32 Gram matrix and product: relative error ~1e-6.
    assert gram_loss(delta, gram) == pytest.approx(exact, rel=1e-5)


def test_alpha_zero_reproduces_rtn():
    w, x, _ = planted_layer()
    x_mean = x.abs().mean(0).float()
    assert torch.equal(candidate_scale(x_mean, None, 0.0), torch.ones_like(x_mean))
    result = search_scales([w.float()], [W4], x_mean, token_loss(x, w), grid=1, duo=False)
    # The only candidate, α = 0, is RTN itself: same loss, so no scaling is chosen.
    assert result.losses == [result.loss_rtn]
    assert result.alpha is None and torch.equal(result.scale, torch.ones_like(x_mean))


@pytest.mark.parametrize("duo", [False, True])
def test_searched_alpha_minimises_the_loss_and_protects_the_planted_channels(duo):
    w, x, salient = planted_layer()
    x_mean = x.abs().mean(0).float()
    loss = token_loss(x, w)
    result = search_scales([w.float()], [W4], x_mean, loss, grid=20, duo=duo)
    w_mean = weight_magnitude([w.float()], [W4]) if duo else None
    by_hand = []
    for k in range(20):
        s = candidate_scale(x_mean, w_mean, k / 19)
        by_hand.append(loss(fake_quantize(w.float() * s, W4) / s))
    assert result.losses == pytest.approx(by_hand, rel=1e-6)
    assert result.loss == pytest.approx(min(by_hand), rel=1e-6)
    assert result.alpha is not None and result.alpha > 0
    # Measured: 0.47 (plain) and 0.45 (duo) of RTN's loss.
    assert result.loss < 0.7 * result.loss_rtn
    assert set(torch.topk(result.scale, 3).indices.tolist()) == set(salient.tolist())


def test_tied_channels_share_one_scale():
    w, x, _ = planted_layer()
    tie = torch.arange(128) % 64  # channel c and c + 64 share parameter c
    result = search_scales([w.float()], [W4], x.abs().mean(0).float(), token_loss(x, w), grid=8, tie=tie)
    assert result.scale.shape == (64,)


def test_clip_search_minimises_each_blocks_output_error():
    w, x, _ = planted_layer()
    gram = (x.t() @ x / x.shape[0]).float()
    clip = ClipSearch(grid=20, min_ratio=0.5)
    clipped, ratio, before, after = search_clip(w.float(), gram, W4, clip)
    assert ratio.shape == (48, 4) and (ratio < 1).any() and after < before
    # Brute force for every block: the chosen ratio's error is the smallest on the grid.
    blocks = w.float().reshape(48, 4, 32)
    for r in range(0, 48, 7):
        for g in range(4):
            sub = gram[g * 32:(g + 1) * 32, g * 32:(g + 1) * 32]
            errs = []
            for t in torch.linspace(1.0, 0.5, 20).tolist():
                b = blocks[r:r + 1, g:g + 1]
                lo, hi = b.amin(-1) * t, b.amax(-1) * t
                q = fake_quantize(b.reshape(1, 32).clamp(float(lo), float(hi)), FormatSpec(bits=4, group_size=32))
                d = (q - b.reshape(1, 32)).double()
                errs.append(float(d @ sub.double() @ d.t()))
            chosen = errs[torch.linspace(1.0, 0.5, 20).tolist().index(float(ratio[r, g]))]
            assert chosen <= min(errs) * (1 + 1e-4)
    # RTN (min-max) on the clipped weights uses exactly the clipped ranges.
    q = rtn(clipped, W4, None)
    assert torch.allclose(q.dequantize(), fake_quantize(clipped, W4))
    assert token_loss(x, w)(fake_quantize(clipped, W4)) < token_loss(x, w)(fake_quantize(w.float(), W4))


@pytest.mark.parametrize("spec", [NF4, FormatSpec(kind="fp", bits=4, group_size=32)])
def test_clip_search_on_a_lookup_table_shrinks_the_absmax(spec):
    """Lookup-table formats scale a block by its absmax: the search shrinks [-absmax, absmax]."""
    w, x, _ = planted_layer()
    gram = (x.t() @ x / x.shape[0]).float()
    grid = torch.linspace(1.0, 0.5, 20).tolist()
    clipped, ratio, before, after = search_clip(w.float(), gram, spec, ClipSearch(grid=20, min_ratio=0.5))
    assert (ratio < 1).any() and after < before
    blocks = w.float().reshape(48, 4, 32)
    for r in range(0, 48, 7):
        for g in range(4):
            b = blocks[r, g].reshape(1, 32)
            sub = gram[g * 32:(g + 1) * 32, g * 32:(g + 1) * 32].double()
            errs = []
            for t in grid:
                m = float(b.abs().max()) * t
                d = (fake_quantize(b.clamp(-m, m), spec) - b).double()
                errs.append(float(d @ sub @ d.t()))
            assert errs[grid.index(float(ratio[r, g]))] <= min(errs) * (1 + 1e-4)
            # The clipped block's absmax is the chosen share of the original one.
            assert torch.allclose(clipped.reshape(48, 4, 32)[r, g].abs().max(), b.abs().max() * ratio[r, g], rtol=1e-6)
    assert token_loss(x, w)(fake_quantize(clipped, spec)) < token_loss(x, w)(fake_quantize(w.float(), spec))


# ---------------------------------------------------------------- folding on every architecture


def awq_transform_only(model, config: AWQConfig, ids) -> list[dict]:
    """Run the AWQ transform (no rounding) block by block, feeding each block the float outputs."""
    arch = arch_for(model)
    recipe = Recipe(W4, (config, RTNConfig(clip=None)))
    inputs = capture_block_inputs(model, arch, calibration_batches(ids, 4))
    targets = find_targets(model, recipe, arch)
    rows = []
    for i, block in enumerate(blocks_of(model, arch)):
        ctx = BlockContext(block, i, arch, inputs, torch.device("cpu"), recipe,
                           tuple(t.path for t in targets if t.block == i))
        result = awq_block(config, ctx, keep_outputs=True)
        rows += result.rows
        inputs.hidden = result.outputs
    return rows


ALL_ROWS = tiny_models.ARCHS + sorted(tiny_models.VARIANTS)


@pytest.fixture
def float64_gemma_norms(monkeypatch):
    """Gemma's norms compute ``x̂ · (1 + w)`` in float32 whatever the model's dtype, so a folded
    ``w' = (1 + w) / s − 1`` is rounded to float32 there; this evaluates the same formula in the
    input's dtype, so that the float64 check sees the fold's arithmetic, not that rounding."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    def forward(self, x):
        return self._norm(x) * (1.0 + self.weight)
    for cls in (GemmaRMSNorm, Gemma2RMSNorm, Gemma3RMSNorm):
        monkeypatch.setattr(cls, "forward", forward)


@pytest.mark.parametrize("arch_name", ALL_ROWS)
def test_awq_scales_fold_exactly_in_float64(arch_name, float64_gemma_norms):
    model = tiny_models.build(arch_name).double()
    ids = tiny_models.input_ids(batch=8, seqlen=16, seed=2)
    with torch.no_grad():
        ref = model(ids).logits
    rows = awq_transform_only(model, AWQConfig(clip=None, grid=6), ids)
    with torch.no_grad():
        out = model(ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < 1e-10
    arch = arch_for(model)
    foldable = sum(g.feeder_kind != "none" for g in arch.groups) * 2
    folded = sum(r.get("alpha") is not None for r in rows)
    skipped = [r for r in rows if "skipped" in r]
    assert len(skipped) == sum(g.feeder_kind == "none" for g in arch.groups) * 2
    # The scales really changed the weights: most foldable groups chose α > 0.
    assert folded >= max(1, foldable // 2), (folded, foldable)


@pytest.mark.parametrize("arch_name", ALL_ROWS)
def test_random_scales_fold_into_every_groups_feeder(arch_name, float64_gemma_norms):
    """Every table row's groups, through fold_scale and channel_tie: the float64 logits stay."""
    model = tiny_models.build(arch_name).double()
    arch = arch_for(model)
    ids = tiny_models.input_ids(batch=2, seqlen=16)
    with torch.no_grad():
        ref = model(ids).logits
    gen = torch.Generator().manual_seed(0)
    tied = 0
    for block in blocks_of(model, arch):
        for g in arch.groups:
            if g.feeder_kind == "none":
                continue
            w = get_module(block, g.linears[0]).weight
            in_f = w.shape[0] if arch.conv1d else w.shape[1]
            tie = channel_tie(block, g, in_f)
            n = int(tie.max()) + 1 if tie is not None else in_f
            tied += tie is not None
            fold_scale(block, g, torch.empty(n, dtype=torch.float64).uniform_(0.3, 3.0, generator=gen),
                       arch.conv1d, tie)
    with torch.no_grad():
        out = model(ids).logits
    assert ((out - ref).norm() / ref.norm()).item() < 1e-10
    cfg = model.config.get_text_config()
    gqa = getattr(cfg, "num_key_value_heads", None) not in (None, cfg.num_attention_heads)
    assert (tied > 0) == (gqa and arch.name not in ("opt", "opt-post-ln", "gpt2"))


def test_fold_detects_a_wrong_tie():
    """The check above can fail: folding v -> o without the GQA tie changes the outputs."""
    model = tiny_models.build("llama").double()
    arch = arch_for(model)
    ids = tiny_models.input_ids(batch=2, seqlen=16)
    with torch.no_grad():
        ref = model(ids).logits
    block, group = blocks_of(model, arch)[0], arch.groups[1]
    # Untied: o's 64 channels get their own scales, v's 32 rows only the first 32 of them.
    s = torch.linspace(0.5, 2.0, 64, dtype=torch.float64)
    with torch.no_grad():
        get_module(block, "self_attn.o_proj").weight.mul_(s)
        get_module(block, "self_attn.v_proj").weight.div_(s[:32].unsqueeze(1))
        assert ((model(ids).logits - ref).norm() / ref.norm()).item() > 1e-3
    tie = channel_tie(block, group, 64)
    assert tie is not None and torch.equal(tie[:16], tie[16:32]) and int(tie.max()) == 31


# ---------------------------------------------------------------- recipes through the pipeline


def tiny_recipe(name: str) -> Recipe:
    return replace(load_preset(name), format=W4)


@pytest.mark.parametrize("arch_name", tiny_models.ARCHS)
def test_awq_recipe_beats_rtn_on_every_architecture(arch_name):
    base = tiny_models.build(arch_name)
    calib = tiny_models.input_ids(batch=16, seqlen=32, seed=5)
    with torch.no_grad():
        ref = base(calib).logits

    awq = copy.deepcopy(base)
    report = quantize_model(awq, tiny_recipe("w4a16-awq"), calib=calib, progress=False, batch_size=8)
    targets = find_targets(base, tiny_recipe("w4a16-awq"))
    assert sorted(r["name"] for r in report.layers) == sorted(t.name for t in targets)
    assert all(isinstance(get_module(awq, t.name), QuantLinear) for t in targets)
    arch = arch_for(base)
    assert len(report.steps) == 2 * len(arch.groups)
    for r in report.steps:
        assert ("skipped" in r) == (r["feeder_kind"] == "none")
        assert 0 < r["clip_ratio_mean"] <= 1 and r["loss_clipped"] > 0
        if "skipped" not in r:
            assert r["loss_scaled"] <= r["loss_rtn"]
    assert report.to_dict()["steps"] == report.steps
    rtn_model = copy.deepcopy(base)
    quantize_model(rtn_model, Recipe(W4, (RTNConfig(clip=None),)), progress=False)
    # Measured on these models: AWQ 0.80-0.93 of RTN's relative logit error.
    err_awq, err_rtn_model = (tiny_models.logit_error(m, calib, ref) for m in (awq, rtn_model))
    assert err_awq < 0.97 * err_rtn_model, (err_awq, err_rtn_model)


def test_awq_gptq_beats_awq_and_checkpoint_round_trips(tmp_path):
    base = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=16, seqlen=32, seed=5)
    with torch.no_grad():
        ref = base(calib).logits
    errors = {}
    for name in ("w4a16-awq", "w4a16-awq-gptq"):
        model = copy.deepcopy(base)
        quantize_model(model, tiny_recipe(name), calib=calib, progress=False, batch_size=8)
        with torch.no_grad():
            logits = model(calib).logits
        errors[name] = ((logits - ref).norm() / ref.norm()).item()
        loaded, _ = load(save(model, None, tmp_path / name))
        with torch.no_grad():
            assert torch.allclose(loaded(calib).logits, logits, atol=1e-5, rtol=1e-5)
    # Measured: 0.194 against 0.223.
    assert errors["w4a16-awq-gptq"] < errors["w4a16-awq"]


@pytest.mark.parametrize("name", ["nf4-dq-awq", "nf4-dq-awq-gptq"])
def test_awq_on_nf4_beats_plain_nf4_and_round_trips(tmp_path, name):
    base = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=16, seqlen=32, seed=5)
    with torch.no_grad():
        ref = base(calib).logits

    recipe = replace(load_preset(name), format=NF4_DQ)
    model = copy.deepcopy(base)
    report = quantize_model(model, recipe, calib=calib, progress=False, batch_size=8)
    assert all(0 < r["clip_ratio_mean"] <= 1 for r in report.steps if "skipped" not in r)
    plain = copy.deepcopy(base)
    quantize_model(plain, replace(load_preset("nf4-dq"), format=NF4_DQ), progress=False)
    err_model, err_plain = (tiny_models.logit_error(m, calib, ref) for m in (model, plain))
    assert err_model < 0.97 * err_plain, (err_model, err_plain)
    loaded, _ = load(save(model, None, tmp_path / name))
    with torch.no_grad():
        assert torch.allclose(loaded(calib).logits, model(calib).logits, atol=1e-5, rtol=1e-5)


def test_recipes_put_transforms_first_and_one_rounder_last():
    with pytest.raises(InputError, match="transforms"):
        Recipe(W4, (AWQConfig(),))
    with pytest.raises(InputError, match="transforms"):
        Recipe(W4, (RTNConfig(), AWQConfig()))
    r = Recipe.from_dict({"steps": [{"method": "awq", "grid": 10, "clip": None}, {"method": "rtn", "clip": None}]})
    assert r.method == "awq+rtn" and r.needs_calibration and r.steps[0] == AWQConfig(grid=10, clip=None)
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(InputError, match="unknown fields"):
        Recipe.from_dict({"steps": [{"method": "awq", "alpha": 0.5}, {"method": "rtn"}]})


def test_method_flags_build_the_awq_recipes():
    assert build_recipe(method="awq") == load_preset("w4a16-awq")
    assert build_recipe(method="awq-gptq") == load_preset("w4a16-awq-gptq")
    r = build_recipe(method="awq", bits=3)
    assert r.method == "awq+rtn" and r.format.bits == 3
    assert build_recipe(preset="w4a16-rtn", method="awq-gptq").method == "awq+gptq"
    assert load_preset("w3a16-awq-gptq").format.bits == 3


@pytest.mark.parametrize("rounder", ["rtn", "gptq"])
def test_clipped_ranges_go_to_gptq_and_clip_the_weights_for_rtn(rounder, monkeypatch):
    """Before GPTQ (a rounder that takes ranges) AWQ leaves the weights unclipped and hands the
    clipped copy over as ``range_weight``; before RTN it clamps them in place."""
    from lowbit.algorithms import registry

    name = {"rtn": "w4a16-awq", "gptq": "w4a16-awq-gptq"}[rounder]
    entry = registry.rounder_for(rounder)
    seen = []

    def recording(w, spec, config, stats=None, **kw):
        seen.append((w.clone(), kw.get("range_weight")))
        return entry.fn(w, spec, config, stats, **kw)
    monkeypatch.setitem(registry.ROUNDERS, rounder, replace(entry, fn=recording))
    model = tiny_models.build("llama")
    quantize_model(model, tiny_recipe(name), calib=tiny_models.input_ids(batch=8, seqlen=32, seed=5),
                   progress=False, batch_size=8)
    assert seen
    for w, r in seen:
        if rounder == "rtn":
            assert r is None
        else:  # every group's range is the clipped copy's, and some weights lie outside it
            assert r is not None and r.shape == w.shape
            rb, wb = r.reshape(r.shape[0], -1, 32), w.reshape(w.shape[0], -1, 32)
            assert (rb.amax(-1) <= wb.amax(-1)).all() and (rb.amin(-1) >= wb.amin(-1)).all()
    if rounder == "gptq":
        assert any((r != w).any() for w, r in seen)
    # Nothing of the hand-over stays on the model.
    assert not any(hasattr(m, "_lowbit_range_weight") for m in model.modules())
