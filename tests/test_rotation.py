"""Offline rotation (R1 + R2): Hadamard constructions, orthogonality, a float64 model that
computes the same logits after rotation on every RMSNorm architecture, untied heads, refusals,
outliers spread, and a rotated W8A8 preset through quantize → save → load."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from lowbit.algorithms.hadamard import hadamard, paley
from lowbit.algorithms.rotation import RotationConfig, rotation_matrix
from lowbit.arch import arch_for, blocks_of, get_module
from lowbit.errors import InputError
from lowbit.io import load, save
from lowbit.modules.act_linear import ActQuantLinear
from lowbit.pipeline.rotate import rotate_model
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe, load_preset

ROTATABLE = ["gemma", "llama", "mistral", "phi3", "qwen2", "qwen3"]
REFUSED = ["gemma2", "gemma3", "gpt2", "opt"]
IDS, CALIB = tiny_models.input_ids(), tiny_models.input_ids(4, 16, seed=5)


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 44, 64, 96, 576, 1536])
def test_hadamard_has_entries_pm1_and_orthogonal_rows(n):
    H = hadamard(n)
    assert H.shape == (n, n) and H.dtype == torch.float64
    assert torch.equal(H.abs(), torch.ones_like(H))
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


def test_paley_reaches_its_orders_and_nothing_else():
    assert paley(12) is not None and paley(20) is not None  # Paley I: q = 11, 19
    assert paley(36) is not None and paley(28) is not None  # Paley II: q = 17, 13
    assert paley(16) is None and paley(9) is None
    assert hadamard(9) is None and hadamard(6) is None and hadamard(10) is None


@pytest.mark.parametrize("n,kind", [(64, "hadamard"), (576, "hadamard"), (18, "random")])
def test_rotation_matrix_is_orthogonal_and_seeded(n, kind):
    Q, got = rotation_matrix(n, seed=3)
    assert got == kind and Q.dtype == torch.float64
    assert torch.allclose(Q @ Q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(Q, rotation_matrix(n, seed=3)[0])
    assert not torch.equal(Q, rotation_matrix(n, seed=4)[0])
    if kind == "hadamard":  # every entry ±1/√n: an outlier is spread evenly over all channels
        assert torch.allclose(Q.abs(), torch.full_like(Q, n ** -0.5))


def _exact_rmsnorm(self, x):
    """transformers' RMSNorms compute ``‖x‖`` in float32 whatever the model's dtype, which a
    rotation changes in the last float32 bit; the same function in the input's dtype."""
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", None))
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return n * ((1 + self.weight) if type(self).__name__.startswith("Gemma") else self.weight)


def _random_norms(model, seed: int = 0):
    """The tiny models' norms start as the identity, which would fold trivially: give every norm
    weight a spread of gains (sign flips included) so folding them is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
    return model


def _exact_norms(model, monkeypatch):
    for cls in {type(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}:
        monkeypatch.setattr(cls, "forward", _exact_rmsnorm)


@pytest.mark.parametrize("arch", ROTATABLE)
def test_rotated_float64_model_computes_the_same_logits(arch, monkeypatch):
    model = _random_norms(tiny_models.build(arch).double())
    _exact_norms(model, monkeypatch)
    with torch.no_grad():
        ref = model(IDS).logits
    before = copy.deepcopy(model)
    rows = rotate_model(model, RotationConfig(seed=1))
    with torch.no_grad():
        out = model(IDS).logits
    assert (out - ref).norm() / ref.norm() < 1e-10
    assert rows[0]["kind"] == "hadamard" and rows[0]["head_dim"] == blocks_of(model, arch_for(model))[0].self_attn.head_dim
    row = arch_for(model)
    block, old = blocks_of(model, row)[0], blocks_of(before, row)[0]
    for g in row.groups:  # every linear of the block changed, every norm feeding one is the identity
        for path in g.linears:
            assert not torch.allclose(get_module(block, path).weight, get_module(old, path).weight)
        if g.feeder_kind != "linear":
            w = get_module(block, g.feeder).weight
            assert torch.equal(w, torch.full_like(w, 0.0 if g.feeder_kind == "rmsnorm_offset" else 1.0))


@pytest.mark.parametrize("heads", [False, True])
def test_values_rotation_alone_and_with_the_stream(heads, monkeypatch):
    model = _random_norms(tiny_models.build("llama").double())  # 4 query heads on 2 value heads
    _exact_norms(model, monkeypatch)
    with torch.no_grad():
        ref = model(IDS).logits
    o_before = model.model.layers[0].self_attn.o_proj.weight.clone()
    rotate_model(model, RotationConfig(heads=heads))
    with torch.no_grad():
        assert (model(IDS).logits - ref).norm() / ref.norm() < 1e-10
    # R1 rotates o_proj's rows (Qᵀ W keeps each column's norm); R2 mixes its columns within a head
    o = model.model.layers[0].self_attn.o_proj.weight
    assert torch.allclose(o.norm(dim=0), o_before.norm(dim=0)) != heads


@pytest.mark.parametrize("arch", REFUSED)
def test_unrotatable_architectures_are_refused_untouched(arch):
    model = tiny_models.build(arch)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match="rotate"):
        rotate_model(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _tied_llama():
    config = tiny_models.CONFIGS["llama"]()
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    return _random_norms(AutoModelForCausalLM.from_config(config).eval())


def test_tied_head_is_untied_and_saves_both_matrices(tmp_path):
    model = _tied_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        ref = model(IDS).logits
    rows = rotate_model(model)
    assert rows[0]["untied_head"] and model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.allclose(model.lm_head.weight, model.model.embed_tokens.weight)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is False
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, model(IDS).logits)
        assert (back(IDS).logits - ref).norm() / ref.norm() < 1e-5  # float32 rotation
    with pytest.raises(InputError, match="untie"):
        rotate_model(_tied_llama(), RotationConfig(untie=False))


def test_rotation_spreads_an_outlier_channel():
    """A residual channel 30x the others (SmolLM2's kind of outlier): after rotation the q/k/v
    input's largest value over its RMS falls to near a Gaussian's."""
    model = tiny_models.build("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] *= 30
        model.model.layers[0].input_layernorm.weight.fill_(1.0)

    def peak_over_rms(m):
        seen = {}
        h = m.model.layers[0].self_attn.q_proj.register_forward_pre_hook(
            lambda _m, a: seen.__setitem__("x", a[0].detach()))
        with torch.no_grad():
            m(CALIB)
        h.remove()
        x = seen["x"]
        return (x.abs().max() / x.pow(2).mean().sqrt()).item()

    before = peak_over_rms(model)
    rotate_model(model)
    after = peak_over_rms(model)
    assert before > 7.5 and after < 5.0, (before, after)


def test_recipe_runs_rotation_first_and_only_first():
    r = load_preset("w8a8-rotated-smoothquant-static")
    assert [s.to_dict()["method"] for s in r.model_transforms] == ["rotate"]
    assert [s.to_dict()["method"] for s in r.block_transforms] == ["smoothquant"]
    fp8 = _rotated("w8a8-fp8")
    assert not fp8.needs_calibration and fp8.model_transforms == (RotationConfig(),)
    with pytest.raises(InputError, match="whole-model"):
        Recipe.from_dict({"steps": [{"method": "smoothquant"}, {"method": "rotate"}, {"method": "rtn"}]})


def _rotated(preset: str) -> Recipe:
    d = load_preset(preset).to_dict()
    return Recipe.from_dict({**d, "steps": [{"method": "rotate"}, *d["steps"]]})


@pytest.mark.parametrize("preset", ["w8a8-rotated-smoothquant-static", "w8a8-fp8"])
def test_rotated_preset_quantizes_saves_and_reloads(tmp_path, preset):
    """The rotated preset, and a dynamic FP8 recipe with a rotate step (no calibration walk)."""
    model = _tied_llama()
    with torch.no_grad():
        ref = model(IDS).logits
    recipe = load_preset(preset)
    recipe = recipe if recipe.model_transforms else _rotated(preset)
    report = quantize_model(model, recipe, calib=CALIB, progress=False)
    assert report.steps[0]["step"] == "rotate" and report.steps[0]["untied_head"]
    layers = [m for m in model.modules() if isinstance(m, ActQuantLinear)]
    assert len(layers) == len(report.layers) == 2 * 7
    with torch.no_grad():
        y = model(IDS).logits
    assert (y - ref).norm() / ref.norm() < 0.15
    out = save(model, None, tmp_path / "ck")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert "rotate" in (out / "recipe.yaml").read_text()
    loaded, _ = load(out)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, y)
    # plain transformers (+ compressed-tensors) reads it: same architecture, untied head
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert theirs.lm_head.weight.data_ptr() != theirs.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert ((theirs(IDS).logits - y).norm() / y.norm()).item() < 1e-2
