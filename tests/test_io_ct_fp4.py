"""MXFP4 / NVFP4 as compressed-tensors' mxfp4- / nvfp4-pack-quantized: our tensors against
compressed-tensors' own compressors, the config it serialises, lowbit.load round trips, and
plain transformers in a process that never imports lowbit.

Plain transformers (5.23 with compressed-tensors 0.20) loads these checkpoints on the CPU and
decompresses every layer while loading, but its FP4 decompressor returns bfloat16 weights
(``unpack_fp4_from_uint8`` defaults to ``dtype=torch.bfloat16``) whatever the model's dtype: a
float32 model then fails in its first forward with ``RuntimeError: expected m1 and m2 to have
the same dtype, but got: float != c10::BFloat16``. So the transformers test saves a bfloat16
model, where the two agree exactly; the float32 round trip is checked through lowbit.load.
"""
from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.compressors.mx_utils import decompress_mx_scale
from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import dequantize
from safetensors import safe_open

import tiny_models
from lowbit.algorithms.rtn import rtn
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import ct_fp4, inspect, load, save
from lowbit.io import compressed_tensors as ct
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe, load_preset
from test_io_child import run_child

MXFP4 = FormatSpec(kind="fp", bits=4, group_size=32, scale_dtype="e8m0")
NVFP4 = FormatSpec(kind="fp", bits=4, group_size=16, scale_dtype="e4m3")
SPECS = {"mxfp4": MXFP4, "nvfp4": NVFP4}
COMPRESSORS = {"mxfp4": MXFP4PackedCompressor, "nvfp4": NVFP4PackedCompressor}


def quant_linear(spec: FormatSpec, out_f: int = 40, in_f: int = 96, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * (10.0 ** (torch.rand(out_f, 1, generator=g) * 4 - 4))
    return QuantLinear.from_quantized(rtn(w, spec))


def ct_scheme(spec: FormatSpec) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], **ct_fp4.fp4_layer("x", quant_linear(spec)).scheme)


@pytest.mark.parametrize("name", SPECS)
def test_compressed_tensors_decompress_gives_our_weights(name):
    """Its decompressor (bfloat16 out) and its float32 dequantize both give our weights exactly:
    the same float32 products (level × scale, scale = s_b / g formed in float32), and a level
    times a power of two is exact."""
    spec = SPECS[name]
    m = quant_linear(spec)
    t = ct_fp4.fp4_layer("x", m).tensors
    assert t["weight_packed"].dtype == torch.uint8 and t["weight_packed"].shape == (40, 48)
    assert t["weight_scale"].shape == (40, 96 // spec.group_size)
    assert ("weight_global_scale" in t) == (name == "nvfp4") and "weight_shape" not in t
    out = COMPRESSORS[name].decompress(dict(t), ct_scheme(spec))
    assert out["weight"].dtype == torch.bfloat16
    assert torch.equal(out["weight"], m.dequantized_weight(torch.bfloat16))

    levels = unpack_fp4_from_uint8(t["weight_packed"], 40, 96, dtype=torch.float32)
    scale = decompress_mx_scale(t["weight_scale"]).float() if name == "mxfp4" else t["weight_scale"].float()
    theirs = dequantize(levels, scale, args=ct_scheme(spec).weights, dtype=torch.float32,
                        global_scale=t.get("weight_global_scale"))
    assert torch.equal(theirs, m.dequantized_weight(torch.float32))


@pytest.mark.parametrize("name", SPECS)
def test_compressed_tensors_compress_writes_our_tensors(name):
    """Given our decoded scales (and global scale), its compressor quantizes our dequantized
    weights to exactly our bytes and scale codes: same nibble order, same scale encoding."""
    spec = SPECS[name]
    m = quant_linear(spec, seed=1)
    ours = ct_fp4.fp4_layer("x", m).tensors
    state = {"weight": m.dequantized_weight(torch.float32), "weight_scale": m.block_scale()}
    if spec.has_global_scale:  # compressed-tensors' weight_scale is the block scale before division
        state["weight_scale"] = m.weight_scale.float()
        state["weight_global_scale"] = m.weight_global_scale
    theirs = COMPRESSORS[name].compress(state, ct_scheme(spec))
    assert torch.equal(theirs["weight_packed"], ours["weight_packed"])
    assert theirs["weight_scale"].dtype == ours["weight_scale"].dtype
    assert torch.equal(theirs["weight_scale"].view(torch.uint8), ours["weight_scale"].view(torch.uint8))


def test_nibble_order_is_even_elements_low():
    codes = torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)
    assert ct_fp4.pack_nibbles(codes).tolist() == [[0x21, 0x8F]]
    assert torch.equal(ct_fp4.unpack_nibbles(ct_fp4.pack_nibbles(codes)), codes)


def quantized_llama(spec: FormatSpec, overrides=(), dtype=torch.float32, arch="llama"):
    model = tiny_models.build(arch).to(dtype)
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides),
                   progress=False)
    return model


@pytest.mark.parametrize("name", SPECS)
def test_config_is_what_compressed_tensors_serialises(name):
    spec = SPECS[name]
    qc = ct.quantization_config(quantized_llama(spec))
    fmt = f"{name}-pack-quantized"
    assert qc["format"] == fmt and qc["quant_method"] == "compressed-tensors" and "dequantize" not in qc
    group = qc["config_groups"]["group_0"]
    assert group["format"] == fmt and group["targets"] == ["Linear"] and qc["ignore"] == ["lm_head"]
    expected = {"num_bits": 4, "type": "float", "symmetric": True, "dynamic": False,
                **({"strategy": "group", "group_size": 32, "scale_dtype": "torch.uint8"} if name == "mxfp4"
                   else {"strategy": "tensor_group", "group_size": 16, "scale_dtype": "torch.float8_e4m3fn"})}
    assert group["weights"] == expected
    # compressed-tensors' own presets for these formats carry the same weight arguments.
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    preset = PRESET_SCHEMES[f"{name.upper()}A16"]["weights"].model_dump(mode="json")
    assert {k: preset[k] for k in expected} == expected
    parsed = QuantizationConfig.model_validate(qc).model_dump(mode="json", exclude=["quant_method"])
    assert parsed == {k: v for k, v in qc.items() if k in parsed}


CASES = {  # name: (format, overrides, arch); qwen2's q/k/v carry biases
    "mxfp4": (MXFP4, (), "llama"),
    "nvfp4": (NVFP4, (), "qwen2"),
    "nvfp4+w8-down": (NVFP4, (("mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),), "llama"),
}


@pytest.mark.parametrize("case", CASES)
def test_save_auto_load_gives_the_same_modules_and_logits(case, tmp_path):
    spec, overrides, arch = CASES[case]
    model = quantized_llama(spec, overrides, arch=arch)
    ids = tiny_models.input_ids()
    with torch.no_grad():
        ref = model(ids).logits
    out = save(model, None, tmp_path / case)  # auto: compressed-tensors
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == ("mixed-precision" if overrides else f"{case}-pack-quantized")
    with safe_open(out / "model.safetensors", framework="pt") as f:
        q = "model.layers.0.self_attn.q_proj"
        keys = {k.removeprefix(q + ".") for k in f.keys() if k.startswith(q + ".")}
        expected = {"weight_packed", "weight_scale"} | ({"weight_global_scale"} if spec.has_global_scale else set())
        assert keys == expected | ({"bias"} if arch == "qwen2" else set())
        assert f.get_tensor(f"{q}.weight_packed").shape == (64, 32)
    loaded, _ = load(out)
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert ours.keys() == theirs.keys()
    for n, m in ours.items():
        assert theirs[n].spec == m.spec
        for k, v in m.state_dict().items():
            assert torch.equal(theirs[n].state_dict()[k], v), (n, k)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    info = inspect(out)
    rows = {r["name"]: r for r in info["layers"]}
    assert rows[q]["format"] == spec.label()
    assert rows[q]["bits_per_weight"] == (4.25 if spec == MXFP4 else pytest.approx(4.5 + 32 / (64 * 64), abs=1e-4))  # inspect rounds to 4 places


def test_gptq_pipeline_shares_the_global_scale_of_stacked_linears(tmp_path):
    """The block pipeline rounds q/k/v (and gate/up) stacked, so they get one NVFP4 global scale;
    the result saves as compressed-tensors and loads to the same logits."""
    from lowbit.algorithms.gptq_step import GPTQConfig

    model = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=4, seqlen=32, seed=5)
    quantize_model(model, Recipe(format=NVFP4, steps=(GPTQConfig(clip=None),)), calib=calib, progress=False)
    attn = dict(model.named_modules())["model.layers.0.self_attn"]
    g = [attn.q_proj.weight_global_scale, attn.k_proj.weight_global_scale, attn.v_proj.weight_global_scale]
    assert torch.equal(g[0], g[1]) and torch.equal(g[0], g[2])
    loaded, _ = load(save(model, None, tmp_path / "gptq"))
    with torch.no_grad():
        assert torch.equal(loaded(calib).logits, model(calib).logits)


def test_awq_on_nvfp4_uses_the_global_scale_beats_rtn_and_round_trips(tmp_path):
    """AWQ's clip search rounds blocks with the tensor's NVFP4 global scale."""
    import copy
    from dataclasses import replace

    base = tiny_models.build("llama")
    calib = tiny_models.input_ids(batch=16, seqlen=32, seed=5)
    with torch.no_grad():
        ref = base(calib).logits

    model = copy.deepcopy(base)
    quantize_model(model, replace(load_preset("nf4-dq-awq"), format=NVFP4), calib=calib, progress=False,
                   batch_size=8)
    plain = copy.deepcopy(base)
    quantize_model(plain, load_preset("nvfp4"), progress=False)
    # Measured: 0.269 against 0.296 relative logit error.
    err_model, err_plain = (tiny_models.logit_error(m, calib, ref) for m in (model, plain))
    assert err_model < 0.95 * err_plain, (err_model, err_plain)
    loaded, _ = load(save(model, None, tmp_path / "awq"))
    with torch.no_grad():
        assert torch.equal(loaded(calib).logits, model(calib).logits)


def test_plain_transformers_loads_bfloat16_checkpoints_with_our_logits(tmp_path):
    """See the module docstring for why bfloat16. The reference is lowbit.load's model: a model
    cast to bfloat16 in memory also casts its rotary ``inv_freq`` buffer, which a loaded one
    recomputes in float32."""
    jobs, refs = [], {}
    for name, spec in SPECS.items():
        out = save(quantized_llama(spec, dtype=torch.bfloat16), None, tmp_path / name, format="compressed-tensors")
        loaded, _ = load(out)
        assert loaded.dtype == torch.bfloat16
        ids = tiny_models.input_ids()
        with torch.no_grad():
            refs[str(out)] = loaded(ids).logits
        torch.save({"ids": ids, "logits": refs[str(out)]}, tmp_path / f"{name}.pt")
        jobs.append({"dir": str(out), "ref": str(tmp_path / f"{name}.pt")})
    report = run_child(jobs, tmp_path)
    assert not report["lowbit_imported"]
    for r in report["results"]:
        assert "error" not in r, r
        # Bit-identical bfloat16 weights (the decompress test) and the same float ops.
        assert r["max_abs_diff"] == 0.0, r


def test_lowbit_load_reads_what_compressed_tensors_itself_writes(tmp_path):
    """compressed-tensors' save path (apply the NVFP4A16 preset, compress_model, save_pretrained,
    update_config) on scales we chose, read back by lowbit.load into the same codes and scales."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config, preset_name_to_scheme

    model = tiny_models.build("llama")
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    expected = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if getattr(m, "quantization_scheme", None) is None:
                continue
            ours = QuantLinear.from_quantized(rtn(m.weight, NVFP4))
            expected[name] = ours
            m.weight.copy_(ours.dequantized_weight(torch.float32))
            m.weight_scale.copy_(ours.weight_scale.float())
            m.weight_global_scale.copy_(ours.weight_global_scale)
    compressor = ModelCompressor.from_pretrained_model(model, "nvfp4-pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "ct")
    compressor.update_config(tmp_path / "ct")

    loaded, _ = load(tmp_path / "ct")
    for name, ours in expected.items():
        m = dict(loaded.named_modules())[name]
        assert isinstance(m, QuantLinear) and m.spec == NVFP4
        for k, v in ours.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), (name, k)


@pytest.mark.parametrize("spec", [FormatSpec(kind="fp", group_size=32), FormatSpec(kind="nf", group_size=32),
                                  FormatSpec(kind="fp", group_size=64, scale_dtype="e8m0")],
                         ids=["fp4-float-scales", "nf4", "mxfp4-g64"])
def test_other_fp4_and_nf4_stay_native(spec, tmp_path):
    model = quantized_llama(spec)
    with pytest.raises(InputError, match="cannot save as compressed-tensors: .*(MXFP4|group 32 only|nf4)"):
        save(model, None, tmp_path / "ct", format="compressed-tensors")
    out = save(model, None, tmp_path / "auto")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "lowbit"
    loaded, _ = load(out)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_models.input_ids()).logits, model(tiny_models.input_ids()).logits)


def test_w4a4_groups_are_refused_with_a_reason():
    group = {"format": "nvfp4-pack-quantized", "targets": ["Linear"],
             "weights": ct_fp4.weight_args(ct_fp4.SCHEMES["e4m3"]), "input_activations": {"num_bits": 4}}
    with pytest.raises(InputError, match="W4A4"):
        ct_fp4.spec_from_group(group, "group_0")
    group = {**group, "input_activations": None, "weights": {**group["weights"], "group_size": 32}}
    with pytest.raises(InputError, match="group 16"):
        ct_fp4.spec_from_group(group, "group_0")


def test_presets_are_the_standard_formats():
    for name, spec in SPECS.items():
        r = load_preset(name)
        assert r.format == spec and r.method == "rtn" and r.activations is None and r.is_ignored("lm_head")
