"""Online Hadamard rotation of down_proj's inputs (QuaRot's R4): the factored product against the
dense matrix in float64, a float64 model unchanged by the transform on every RMSNorm-style
architecture, the rotation carried to the quantized layers (calibration sees rotated inputs),
the recipe order rule, and a static W8A8 recipe through quantize → save (native) → load."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from lowbit.algorithms.hadamard import hadamard, hadamard_factors, random_signs, randomized_hadamard, sylvester
from lowbit.algorithms.online_hadamard import OnlineHadamardConfig
from lowbit.arch import arch_for, blocks_of
from lowbit.errors import InputError
from lowbit.io import load, save
from lowbit.modules.act_linear import ActQuantLinear
from lowbit.modules.input_hadamard import SIGNS, attach_input_hadamard, has_input_hadamard, input_hadamard_layers, rotate
from lowbit.pipeline.online_hadamard_block import rotate_down_inputs
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe, load_preset

IDS, CALIB = tiny_models.input_ids(), tiny_models.input_ids(4, 16, seed=5)
ARCHS = ["gemma", "llama", "mistral", "phi3", "qwen2", "qwen3"]


def _recipe(steps: list[dict], dynamic: bool = False) -> Recipe:
    return Recipe.from_dict({"name": "r4", "format": {"kind": "int", "bits": 8, "sym": True, "group_size": -1},
                             "steps": steps, "activations": {"kind": "int8", "dynamic": dynamic, "observer": "mse"}})


R4_STATIC = [{"method": "rotate"}, {"method": "smoothquant", "alpha": 0.5, "linear_feeders": True},
             {"method": "online_hadamard"}, {"method": "rtn", "clip": None}]


@pytest.mark.parametrize("n", [1, 8, 96, 576, 1536, 2560])
def test_factors_make_the_hadamard_matrix(n):
    A, p = hadamard_factors(n)
    assert torch.equal(torch.kron(A, sylvester(p)), hadamard(n))


@pytest.mark.parametrize("n", [96, 128, 1536])
def test_factored_rotation_equals_the_dense_product(n):
    layer = attach_input_hadamard(torch.nn.Linear(n, 3), random_signs(n, seed=n))
    Q = randomized_hadamard(getattr(layer, SIGNS))
    assert torch.allclose(Q @ Q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    x = torch.randn(2, 5, n, dtype=torch.float64) * torch.logspace(-3, 3, n, dtype=torch.float64)
    want = x @ Q
    assert ((rotate(x, layer) - want).abs().max() / want.abs().max()).item() < 1e-14
    # float32 inputs: computed in float32, error at float32's rounding
    got32 = rotate(x.float(), layer).double()
    assert ((got32 - want).norm() / want.norm()).item() < 1e-6


def test_rotation_spreads_one_outlier_channel_over_every_channel():
    n = 1536
    layer = attach_input_hadamard(torch.nn.Linear(n, 1, bias=False), random_signs(n, seed=0))
    x = torch.zeros(1, n, dtype=torch.float64)
    x[0, 7] = 1000.0
    y = rotate(x, layer)
    assert torch.allclose(y.abs(), torch.full_like(y, 1000.0 / n ** 0.5))


@pytest.mark.parametrize("arch", ARCHS)
def test_float64_model_computes_the_same_logits(arch):
    model = tiny_models.build(arch).double()
    with torch.no_grad():
        ref = model(IDS).logits
    row = arch_for(model)
    rows = rotate_down_inputs(model, OnlineHadamardConfig(seed=3))
    assert [r["linear"] for r in rows] == list(row.groups[-1].linears) * len(blocks_of(model, row))
    assert [r["seed"] for r in rows] == [3 + i for i in range(len(blocks_of(model, row)))]
    assert set(input_hadamard_layers(model)) == {f"{row.blocks}.{i}.{p}" for i in range(len(blocks_of(model, row)))
                                               for p in row.groups[-1].linears}
    with torch.no_grad():
        out = model(IDS).logits
    assert ((out - ref).norm() / ref.norm()).item() < 1e-10


def test_online_hadamard_must_be_the_last_transform():
    with pytest.raises(InputError, match="online_hadamard must be the last transform"):
        _recipe([{"method": "online_hadamard"}, {"method": "smoothquant"}, {"method": "rtn"}])
    with pytest.raises(InputError, match="unknown fields"):
        _recipe([{"method": "online_hadamard", "size": 3}, {"method": "rtn"}])
    r = _recipe(R4_STATIC)
    assert r.method == "rotate+smoothquant+online_hadamard+rtn"
    assert Recipe.from_dict(r.to_dict()) == r


def test_calibration_sees_the_rotated_inputs():
    """GPTQ's Hessian and the static observer of down_proj both read what the layer quantizes."""
    model = tiny_models.build("llama")
    recipe = _recipe([{"method": "online_hadamard"}, {"method": "gptq"}])
    report = quantize_model(model, recipe, calib=CALIB, progress=False)
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, ActQuantLinear) and has_input_hadamard(down)
    assert not has_input_hadamard(model.model.layers[0].mlp.up_proj)
    seen = []
    h = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    raw = []
    h2 = down.register_forward_pre_hook(lambda _m, args: raw.append(args[0]), prepend=True)
    with torch.no_grad():
        model(IDS)
    h.remove(), h2.remove()
    assert torch.allclose(seen[0], rotate(raw[0], down))
    assert {r["name"] for r in report.inputs} >= {"model.layers.0.mlp.down_proj"}
    assert all(r["proxy_err_rel"] < 0.05 for r in report.layers)


@pytest.mark.parametrize("arch,preset", [("llama", "w8a8-rotated-hadamard-static"),
                                         ("qwen2", "w8a8-rotated-hadamard-static"),
                                         ("llama", "w8a8-rotated-hadamard"), ("qwen2", "w8a8-rotated-hadamard")])
def test_rotated_presets_quantize_save_natively_and_reload(tmp_path, arch, preset):
    model = tiny_models.build(arch)
    with torch.no_grad():
        ref = model(IDS).logits
    report = quantize_model(model, load_preset(preset), calib=CALIB, progress=False)
    assert [r["step"] for r in report.steps if r["step"] == "online_hadamard"] == ["online_hadamard"] * 2
    with torch.no_grad():
        y = model(IDS).logits
    assert ((y - ref).norm() / ref.norm()).item() < 0.2
    with pytest.raises(InputError, match="rotates its inputs online"):
        save(model, None, tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct").exists()
    out = save(model, None, tmp_path / "ck")  # auto: native
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["layout"] == "native" and set(qc["input_hadamard"]) == set(input_hadamard_layers(model))
    loaded, _ = load(out)
    assert input_hadamard_layers(loaded) == input_hadamard_layers(model)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, y)
    import lowbit  # noqa: F401  (registers the quantizer transformers loads it with)

    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(theirs(IDS).logits, y)


def test_deepcopy_keeps_the_rotation():
    layer = attach_input_hadamard(torch.nn.Linear(96, 4), random_signs(96, seed=1))
    twin = copy.deepcopy(layer)
    x = torch.randn(3, 96)
    assert torch.equal(twin(x), layer(x))
    with pytest.raises(InputError, match="already rotates"):
        attach_input_hadamard(layer, random_signs(96, seed=2))


def test_fusing_leaves_a_rotating_member_alone():
    from lowbit.modules.fused_projections import fuse_projections

    model = tiny_models.build("llama")
    recipe = _recipe([{"method": "online_hadamard", "linears": ["self_attn.q_proj"]}, {"method": "rtn"}], dynamic=True)
    quantize_model(model, recipe, calib=CALIB, progress=False)
    with torch.no_grad():
        want = model(IDS).logits
    fused = fuse_projections(model)
    assert fused and not any("q_proj" in n for n in fused)  # gate/up fused, q/k/v not
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, want, atol=1e-5)


def test_a_linear_left_in_float_is_not_rotated(tmp_path):
    model = tiny_models.build("llama")
    recipe = Recipe.from_dict({**_recipe(R4_STATIC).to_dict(), "ignore": ["lm_head", "re:.*layers\\.0\\.mlp\\.down_proj"]})
    quantize_model(model, recipe, calib=CALIB, progress=False)
    assert list(input_hadamard_layers(model)) == ["model.layers.1.mlp.down_proj"]
    with torch.no_grad():
        y = model(IDS).logits
    loaded, _ = load(save(model, None, tmp_path / "ck"))
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, y)


def test_cost_benchmark_dry_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import hadamard_cost

    assert hadamard_cost.main(["--device", "cpu", "--dry", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "hadamard_cost.json").read_text())
    assert [r["M"] for r in doc["rows"]] == hadamard_cost.DRY_BATCHES
    # bfloat16 inputs rotated in float32 on the CPU, against the float64 product rounded to
    # bfloat16: at most one bfloat16 step (2^-8 relative) apart where they round differently
    assert all(r["rotation_rel_err"] < 2 ** -8 for r in doc["rows"])
    assert "| 96×32 |" in (tmp_path / "hadamard_cost.md").read_text()
