"""SmoothQuant: the scale formula, folding that leaves a float64 model's output unchanged and
balances each smoothed input against its weights, and W8A8 that gains from it."""
from __future__ import annotations

import copy

import pytest
import torch

import tiny_models
from lowbit.algorithms.smoothquant import SmoothQuantConfig, smoothing_scale
from lowbit.arch import arch_for, blocks_of, get_module
from lowbit.errors import InputError
from lowbit.pipeline.smoothquant_block import smooth_model, weight_column_absmax
from lowbit.quantize import quantize_model
from lowbit.recipes import load_preset


def test_scale_formula_ties_and_dead_channels():
    a = torch.tensor([4.0, 1.0, 0.0, 9.0, 2.0, 8.0])
    w = torch.tensor([1.0, 4.0, 3.0, 1.0, 0.5, 2.0])
    s = smoothing_scale(a, w, 0.5)
    ref = (a.double() ** 0.5) / (w.double() ** 0.5)
    ref[2] = 1.0  # no input on that channel: nothing to balance
    assert torch.allclose(s, ref, rtol=1e-12)
    assert torch.allclose(smoothing_scale(a, w, 1.0)[[0, 1, 3]], a.double()[[0, 1, 3]])
    assert torch.allclose(smoothing_scale(a, w, 0.0)[[0, 1, 3]], 1 / w.double()[[0, 1, 3]])
    # channels 0-2 and 3-5 each read one shared parameter: maxima over the tied channels
    tie = torch.tensor([0, 0, 0, 1, 1, 1])
    st = smoothing_scale(a, w, 0.5, tie)
    assert torch.allclose(st, torch.tensor([(4.0 / 4.0) ** 0.5, (9.0 / 2.0) ** 0.5], dtype=torch.float64))
    with pytest.raises(InputError, match="alpha"):
        SmoothQuantConfig(alpha=1.5)


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_folding_is_exact_in_float64(arch):
    """Every group a scale can be folded into (norms and linears) is smoothed: the float64 model
    computes the same logits to rounding (1e-12; gemma's norms compute ``1 + w`` in float32
    whatever the model's dtype, so there float32 rounding, 1e-6), while its weights changed."""
    model = tiny_models.build(arch).double()
    ids, calib = tiny_models.input_ids(), tiny_models.input_ids(4, 16, seed=7)
    with torch.no_grad():
        ref = model(ids).logits
    before = copy.deepcopy(model)
    rows = smooth_model(model, calib, SmoothQuantConfig(alpha=0.5, linear_feeders=True))
    with torch.no_grad():
        out = model(ids).logits
    smoothable = [g for g in arch_for(model).groups if g.feeder_kind != "none"]
    assert len(rows) == 2 * len(smoothable)  # two blocks
    assert (out - ref).norm() / ref.norm() < (1e-6 if arch.startswith("gemma") else 1e-12)
    changed = sum(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))
    assert changed >= 2 * len(smoothable)  # a feeder and a linear per group, at least


def _input_absmax(model, module, calib) -> torch.Tensor:
    seen = {}
    h = module.register_forward_pre_hook(
        lambda _m, args: seen.__setitem__("x", args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0)))
    with torch.no_grad():
        model(calib)
    h.remove()
    return seen["x"].double()


@pytest.mark.parametrize("arch", ["llama", "gemma", "opt", "gpt2"])
def test_alpha_half_balances_each_input_channel_against_its_weights(arch):
    """alpha 0.5 on the norm-fed groups (the paper's setting, where no fold touches another
    group's weights): afterwards max|X_j| = max|W_j| on every live channel."""
    model = tiny_models.build(arch).double()
    calib = tiny_models.input_ids(4, 16, seed=7)
    rows = smooth_model(model, calib, SmoothQuantConfig(alpha=0.5))
    row = arch_for(model)
    block = blocks_of(model, row)[1]
    groups = [g for g in row.groups if g.feeder_kind not in ("none", "linear")]
    assert len([r for r in rows if r["block"] == 1]) == len(groups) >= 1
    for g in groups:
        x = _input_absmax(model, get_module(block, g.linears[0]), calib)
        w = weight_column_absmax(block, g, row.conv1d).double()
        live = x > 0
        # gemma's norms compute in float32 whatever the model's dtype (see above)
        assert torch.allclose(x[live], w[live], rtol=1e-6 if arch == "gemma" else 1e-9), (arch, g.feeder)


def _outlier_llama():
    """A tiny llama whose channel 5 of every attention input is 40x larger (the norm weight) and
    whose q/k/v read it 40x weaker: the same function, with an activation outlier channel."""
    model = tiny_models.build("llama")
    for block in model.model.layers:
        with torch.no_grad():
            block.input_layernorm.weight[5] *= 40
            for p in ("q_proj", "k_proj", "v_proj"):
                getattr(block.self_attn, p).weight[:, 5] /= 40
    return model


def test_smoothquant_w8a8_beats_plain_w8a8_on_an_outlier_channel():
    base = _outlier_llama()
    ids, calib = tiny_models.input_ids(4, 32, seed=3), tiny_models.input_ids(8, 32, seed=9)
    with torch.no_grad():
        ref = base(ids).logits
    errs = {}
    for preset in ("w8a8-int8", "w8a8-smoothquant"):
        m = copy.deepcopy(base)
        report = quantize_model(m, load_preset(preset), calib=calib, progress=False)
        with torch.no_grad():
            errs[preset] = ((m(ids).logits - ref).norm() / ref.norm()).item()
        if preset == "w8a8-smoothquant":
            assert len(report.steps) == 2 * 2  # two norm-fed groups per block, two blocks
            assert all(r["act_absmax_after"] < r["act_absmax_before"] for r in report.steps if r["feeder"] == "input_layernorm")
    assert errs["w8a8-smoothquant"] < 0.5 * errs["w8a8-int8"], errs


@pytest.mark.parametrize("preset, plain", [("llm-int8-smoothquant", "llm-int8"),
                                           ("w8a8-fp8-smoothquant", "w8a8-fp8")])
def test_smoothing_before_llm_int8_and_fp8(preset, plain):
    """The SmoothQuant-folded LLM.int8() and FP8 presets fold the norm-fed scales first, then run
    their plain preset's layers. On the outlier channel LLM.int8() no longer sends the attention
    inputs' columns to float (the channel is smoothed below the threshold)."""
    from lowbit.modules import ActQuantLinear
    from lowbit.modules.llm_int8_linear import outlier_fractions

    base = _outlier_llama()
    ids, calib = tiny_models.input_ids(4, 32, seed=3), tiny_models.input_ids(8, 32, seed=9)
    with torch.no_grad():
        ref = base(ids).logits
    errs, models = {}, {}
    for name in (plain, preset):
        m = models[name] = copy.deepcopy(base)
        report = quantize_model(m, load_preset(name), calib=calib, progress=False)
        kinds = {l.act_kind for l in m.modules() if isinstance(l, ActQuantLinear)}
        assert kinds == {load_preset(plain).activations.kind}
        with torch.no_grad():
            errs[name] = ((m(ids).logits - ref).norm() / ref.norm()).item()
    assert len(report.steps) == 2 * 2 and all(r["feeder"] != "v_proj" for r in report.steps)
    assert errs[preset] < 1.5 * errs[plain], errs
    if plain == "llm-int8":
        qkv = {n: f for n, f in outlier_fractions(models[plain]).items() if "q_proj" in n}
        smoothed = {n: f for n, f in outlier_fractions(models[preset]).items() if "q_proj" in n}
        assert all(f > 0 for f in qkv.values()) and all(f == 0 for f in smoothed.values()), (qkv, smoothed)
