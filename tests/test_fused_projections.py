"""Projections sharing an input, run as one stacked linear: same logits, nothing kept, no saving."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tiny_models
from lowbit.errors import InputError
from lowbit.io import save
from lowbit.modules.fused_projections import (FusedProjection, ProjectionSlice, fuse_projections,
                                              is_fused)
from lowbit.quantize import quantize_model
from lowbit.recipes import load_preset

IDS = tiny_models.input_ids()
# The table rows whose norm feeds more than one separate linear: q/k/v and gate/up (phi3 has
# them stacked already; gpt2's are Conv1D).
FUSED_PER_BLOCK = {"phi3": 0, "gpt2": 0, "opt": 1}


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_fused_float_model_gives_the_same_logits(arch):
    model = tiny_models.build(arch)
    with torch.no_grad():
        ref = model(IDS).logits
    names = fuse_projections(model)
    blocks = model.config.num_hidden_layers
    assert len(names) == FUSED_PER_BLOCK.get(arch, 2) * blocks
    assert is_fused(model) == bool(names)
    assert tiny_models.logit_error(model, IDS, ref) < 1e-5
    for m in model.modules():  # every member served: no product outlives the forward
        if isinstance(m, FusedProjection):
            assert m._parts is None and m._input is None


@pytest.mark.parametrize("preset", ["w4a16-rtn", "w8a16-rtn", "w8a8-int8", "w8a8-fp8"])
def test_fused_quantized_model_gives_the_same_logits(preset):
    model = tiny_models.build("llama")
    quantize_model(model, load_preset(preset), progress=False)
    with torch.no_grad():
        ref = model(IDS).logits
    attn = model.model.layers[0].self_attn
    q_rows = attn.q_proj.out_features
    assert fuse_projections(model)
    fused = model.model.layers[0].fused_self_attn_q_proj
    assert isinstance(attn.q_proj, ProjectionSlice) and attn.q_proj.out_features == q_rows
    # the stacked layer holds the members' codes, rows in order
    assert fused.linear.out_features == q_rows + 2 * attn.k_proj.out_features
    assert tiny_models.logit_error(model, IDS, ref) < 1e-5


def test_mixed_members_stay_separate():
    model = tiny_models.build("llama")
    quantize_model(model, load_preset("w4a16-rtn"), progress=False)
    block = model.model.layers[0]
    block.self_attn.k_proj = nn.Linear(block.self_attn.k_proj.in_features,
                                       block.self_attn.k_proj.out_features)  # one float member
    names = fuse_projections(model)
    assert not any(n.startswith("model.layers.0.fused_self_attn") for n in names)
    assert not isinstance(block.self_attn.q_proj, ProjectionSlice)
    assert isinstance(block.mlp.gate_proj, ProjectionSlice)  # the MLP's pair still fuses


def test_another_input_recomputes_and_a_fused_model_is_not_saved(tmp_path):
    model = tiny_models.build("llama")
    quantize_model(model, load_preset("w4a16-rtn"), progress=False)
    attn = model.model.layers[0].self_attn
    ref = copy.deepcopy(attn)
    fuse_projections(model)
    x1, x2 = torch.randn(2, 3, attn.q_proj.in_features).unbind(0)
    with torch.no_grad():
        q1 = attn.q_proj(x1)
        k2 = attn.k_proj(x2)  # a different input before x1's members are all served
        assert torch.allclose(q1, ref.q_proj(x1), atol=1e-6)
        assert torch.allclose(k2, ref.k_proj(x2), atol=1e-6)
    with pytest.raises(InputError, match="save it before fusing"):
        save(model, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_members_trace_as_one_graph():
    # torch.compile follows the identity hand-over without a graph break.
    lin = [nn.Linear(8, n) for n in (8, 4, 4)]
    fused = FusedProjection(torch.nn.Linear(8, 16), [8, 4, 4])
    with torch.no_grad():
        fused.linear.weight.copy_(torch.cat([m.weight for m in lin]))
        fused.linear.bias.copy_(torch.cat([m.bias for m in lin]))
    slices = [ProjectionSlice(fused, i, 8, n) for i, n in enumerate((8, 4, 4))]

    def step(x):
        return slices[0](x) + torch.cat([slices[1](x), slices[2](x)], dim=-1)

    x = torch.randn(3, 8)
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    with torch.no_grad():
        want = lin[0](x) + torch.cat([lin[1](x), lin[2](x)], dim=-1)
        assert torch.allclose(compiled(x), want, atol=1e-6)
        assert torch.allclose(compiled(x + 1), step(x + 1), atol=1e-6)
    assert fused._parts is None


def test_static_members_fuse_only_with_one_input_scale():
    calib = tiny_models.input_ids(4, 16, seed=5)
    model = tiny_models.build("llama")
    quantize_model(model, load_preset("w8a8-int8-static"), calib=calib, progress=False)
    mlp = model.model.layers[0].mlp
    # gate and up read one input, so calibration gave them one scale; force q/k/v's apart
    assert torch.equal(mlp.gate_proj.input_scale, mlp.up_proj.input_scale)
    attn = model.model.layers[0].self_attn
    attn.k_proj.input_scale = attn.k_proj.input_scale * 2
    with torch.no_grad():
        ref = model(IDS).logits
    names = fuse_projections(model)
    assert "model.layers.0.fused_mlp_gate_proj" in names
    assert "model.layers.0.fused_self_attn_q_proj" not in names
    assert tiny_models.logit_error(model, IDS, ref) < 1e-5
