"""W8A8 int8: the integer product is exact, the layer applies the scales after it, and
quantized models of every architecture save, load and run."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn import rtn
from lowbit.kernels.activations import int8_per_token, quantize_int8
from lowbit.kernels.reference_w8a8 import int_matmul
from lowbit.modules import W8A8Linear
from lowbit.modules.w8a8_linear import WEIGHT_SPEC


@pytest.mark.parametrize("m, k, n", [(1, 7, 3), (5, 64, 24), (17, 4099, 9), (3, 1, 1)])
def test_int_matmul_is_bit_exact_against_int64(m, k, n):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    a[0], b[0] = -128, -128  # the largest possible partial sums: 2^14 each
    out = int_matmul(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long().t())


def test_per_token_codes_use_the_whole_grid_and_err_by_half_a_step():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g) * torch.logspace(-4, 3, 6).unsqueeze(1)
    q, scale = int8_per_token(x)
    assert q.dtype == torch.int8 and scale.shape == (6, 1)
    assert torch.allclose(scale.squeeze(1), x.abs().amax(1) / 127.5, rtol=1e-6)
    err = (q.float() * scale - x).abs()
    assert torch.all(err <= scale * 0.5 * (1 + 1e-5))
    assert torch.all(q.long().abs().amax(1) >= 127)


def test_static_scale_clamps_what_lies_beyond_it():
    x = torch.tensor([[0.5, -0.5, 3.0, -3.0]])
    q = quantize_int8(x, torch.tensor([1 / 127.5]))
    assert q.tolist() == [[64, -64, 127, -128]]


@pytest.mark.parametrize("static", [False, True])
def test_layer_is_the_exact_integer_product_scaled(static):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(24, 96, generator=g), torch.randn(24, generator=g)
    x = torch.randn(3, 5, 96, generator=g)
    qw = rtn(w, WEIGHT_SPEC)
    input_scale = x.abs().max().reshape(1) / 127.5 if static else None
    m = W8A8Linear.from_quantized(qw, b, input_scale=input_scale)
    assert m.weight_codes.dtype == torch.int8 and m.static == static
    y = m(x)
    q, sx = int8_per_token(x.reshape(-1, 96), m.input_scale)
    acc = q.long() @ m.weight_codes.long().t()  # the int64 reference product
    ref = acc.float() * sx * m.weight_scale.reshape(1, -1) + b
    assert torch.equal(y.reshape(-1, 24), ref)
    # two int8 roundings of N(0, 1) data (steps ~ 4σ/127.5, noise ~ 0.7% of σ each): ~1% together
    exact = x.double() @ w.double().t() + b.double()
    assert (y.double() - exact).norm() / exact.norm() < 0.015


def test_weights_round_trip_to_the_rounders_codes():
    w = torch.randn(16, 32)
    qw = rtn(w, WEIGHT_SPEC)
    m = W8A8Linear.from_quantized(qw)
    back = m.quantized_weight()
    assert torch.equal(back.codes, qw.codes) and torch.equal(back.scale, qw.scale)
    assert torch.equal(m.dequantized_weight(), qw.dequantize())


# ---------------------------------------------------------------- presets on tiny models

import copy  # noqa: E402

import tiny_models  # noqa: E402
from lowbit.io import inspect, load, save  # noqa: E402
from lowbit.modules import ActQuantLinear, FP8Linear, LLMInt8Linear  # noqa: E402
from lowbit.quantize import quantize_model  # noqa: E402
from lowbit.recipes import load_preset  # noqa: E402

# Relative logit error bound per preset on the tiny models (weights drawn at 0.1, so each block
# moves the logits a lot): int8 roundings cost ~1-3%, E4M3's 3 mantissa bits ~5-10%, per-tensor
# static scales a little more than per-token ones; smoothing a random model (no outlier channels
# to even out) only moves magnitude between inputs and weights.
PRESETS = {"w8a8-int8": 0.05, "w8a8-smoothquant": 0.05, "w8a8-int8-static": 0.15,
           "w8a8-smoothquant-static": 0.2, "llm-int8": 0.05, "llm-int8-smoothquant": 0.05,
           "w8a8-fp8": 0.15, "w8a8-fp8-gptq": 0.15, "w8a8-fp8-smoothquant": 0.15, "w8a8-fp8-static": 0.2}
IDS, CALIB = tiny_models.input_ids(), tiny_models.input_ids(4, 16, seed=5)


def _quantized(arch: str, preset: str):
    model = tiny_models.build(arch)
    report = quantize_model(model, load_preset(preset), calib=CALIB, progress=False)
    return model, report


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_every_preset_on_every_architecture(arch):
    base = tiny_models.build(arch)
    with torch.no_grad():
        ref = base(IDS).logits
    n_targets = len(arch_rows(base))
    for preset, bound in PRESETS.items():
        model, report = _quantized(arch, preset)
        layers = [m for m in model.modules() if isinstance(m, ActQuantLinear)]
        assert len(layers) == n_targets == len(report.layers), preset
        recipe = load_preset(preset)
        assert all(m.act_kind == recipe.activations.kind for m in layers)
        assert all(m.static == (not recipe.activations.dynamic) for m in layers)
        if not recipe.activations.dynamic:
            assert len(report.inputs) == n_targets
            assert all(torch.isfinite(m.input_scale).all() and m.input_scale.item() > 0 for m in layers)
        with torch.no_grad():
            err = ((model(IDS).logits - ref).norm() / ref.norm()).item()
        assert err < bound, (arch, preset, err)


def arch_rows(model) -> list[str]:
    from lowbit.quantize import find_targets
    return find_targets(model, load_preset("w8a8-int8"))


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_load_gives_the_same_logits(tmp_path, arch, preset):
    """compressed-tensors where it can express the layers (int8 and FP8 on nn.Linear models),
    lowbit's native layout otherwise (LLM.int8; GPT-2's Conv1D)."""
    model, _ = _quantized(arch, preset)
    with torch.no_grad():
        y = model(IDS).logits
    out = save(model, None, tmp_path / "ck")
    info = inspect(out)
    expect_ct = arch != "gpt2" and load_preset(preset).activations.kind != "llm-int8"
    assert info["format"] == ("compressed-tensors" if expect_ct else "native")
    assert info["quantized_layers"] == len(arch_rows(model))
    assert 8.0 < info["bits_per_weight"] < 8.6  # 8-bit codes plus a scale per row (and input scale)
    loaded, _ = load(out)
    kinds = {type(m) for m in loaded.modules() if isinstance(m, ActQuantLinear)}
    assert kinds == {type(m) for m in model.modules() if isinstance(m, ActQuantLinear)}
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, y)


@pytest.mark.parametrize("preset", ["w8a8-int8", "w8a8-fp8-static"])
def test_plain_transformers_reads_the_compressed_tensors_checkpoint(tmp_path, preset):
    """No lowbit on the reading side: transformers + compressed-tensors decompress the weights and
    quantize the inputs themselves (fake quantization), and land on lowbit's logits."""
    from transformers import AutoModelForCausalLM

    model, _ = _quantized("llama", preset)
    with torch.no_grad():
        y = model(IDS).logits
    out = save(model, None, tmp_path / "ck", format="compressed-tensors")
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        y_theirs = theirs(IDS).logits
    # identical arithmetic up to float rounding, which can flip an int8 rounding here and there
    assert ((y_theirs - y).norm() / y.norm()).item() < 1e-2


def test_llm_int8_is_native_and_counts_outliers(tmp_path):
    model, _ = _quantized("llama", "llm-int8")
    with torch.no_grad():
        model(IDS * 0 + 3)
    fractions = [m.outlier_fraction for m in model.modules() if isinstance(m, LLMInt8Linear)]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    with pytest.raises(Exception, match="LLM.int8"):
        save(model, None, tmp_path / "ck", format="compressed-tensors")


def test_static_scale_follows_the_observer():
    """The same calibration, one window per batch: min-max keeps the largest input ever seen, the
    moving average mostly the first batch's range, which is never larger and here often smaller."""
    scales = {}
    for observer in ("minmax", "moving_average"):
        from lowbit.recipes.build import build_recipe
        model = tiny_models.build("llama")
        quantize_model(model, build_recipe(preset="w8a8-int8-static", observer=observer), calib=CALIB,
                       progress=False, batch_size=1)
        scales[observer] = torch.stack([m.input_scale for m in model.modules() if isinstance(m, ActQuantLinear)])
    assert torch.all(scales["moving_average"] <= scales["minmax"] * (1 + 1e-6))
    assert torch.any(scales["moving_average"] < scales["minmax"] * 0.95)
    assert FP8Linear  # imported for the presets above


@pytest.mark.parametrize("true_sequential", [False, True])
@pytest.mark.parametrize("preset", ["w8a8-int8-static", "w8a8-fp8-static"])
def test_static_presets_with_gptq_weights(preset, true_sequential):
    """GPTQ's walk rounds each block before any static scale exists: the next block's inputs (and
    a true-sequential walk's later Hessians) come from its layers quantizing per token, never from
    the NaN placeholder scale (which ended the walk with a HessianError at block 1)."""
    import dataclasses

    from lowbit.algorithms.gptq_step import GPTQConfig

    recipe = dataclasses.replace(load_preset(preset), steps=(GPTQConfig(clip=None),))
    base = tiny_models.build("llama")
    with torch.no_grad():
        ref = base(IDS).logits
    model = copy.deepcopy(base)
    report = quantize_model(model, recipe, calib=CALIB, progress=False, true_sequential=true_sequential)
    layers = [m for m in model.modules() if isinstance(m, ActQuantLinear)]
    assert len(layers) == len(report.layers) == len(report.inputs) > 0
    assert all(0 <= r["proxy_err_rel"] < 0.05 for r in report.layers)  # GPTQ rows: finite Hessians
    assert all(torch.isfinite(m.input_scale).all() and m.input_scale.item() > 0 for m in layers)
    with torch.no_grad():
        err = ((model(IDS).logits - ref).norm() / ref.norm()).item()
    assert err < PRESETS[preset], err


# ---------------------------------------------------------------- command line

def test_cli_static_preset_with_an_observer(tmp_path):
    from click.testing import CliRunner

    from lowbit.cli import main
    from tiny_checkpoint import write_model_dir

    model_dir = write_model_dir(tmp_path / "tiny-llama")
    out = tmp_path / "w8a8"
    fast = ["--seqlen", "64", "--n-samples", "2", "--eval", "builtin:pydoc", "--eval-windows", "2", "--quiet"]
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--preset", "w8a8-int8-static", "--observer", "kl",
                                  "--out", str(out), *fast])
    assert r.exit_code == 0, r.output
    assert "activations a8-static" in r.output
    info = inspect(out)
    assert info["recipe"]["activations"] == {"kind": "int8", "dynamic": False, "observer": "kl"}
    assert info["recipe"]["name"] == "w8a8-int8-static-kl"
    r = CliRunner().invoke(main, ["quantize", str(model_dir), "--preset", "w8a8-int8", "--observer", "kl",
                                  "--out", str(tmp_path / "bad"), *fast])
    assert r.exit_code == 2 and "--observer" in r.stderr and not (tmp_path / "bad").exists()
