"""The native layout and the transformers quantizer registered by ``import lowbit``.

(That the same checkpoints fail loudly *without* lowbit is checked per architecture, in a child
process, by tests/test_arch_roundtrip.py.)
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import lowbit  # noqa: F401  (registers the quantizer)
import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import load, save
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe

DEFAULT = FormatSpec(bits=4, sym=False, group_size=32)
DOWN = FormatSpec(bits=8, sym=True, group_size=-1)


def quantized(arch="llama", spec=DEFAULT, overrides=(("mlp.down_proj", DOWN),)):
    model = tiny_models.build(arch)
    recipe = Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides, name="test-recipe")
    quantize_model(model, recipe, progress=False)
    return model, recipe


def logits(model):
    with torch.no_grad():
        return model(tiny_models.input_ids()).logits


def specs(model):
    return {n: m.spec for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    model, recipe = quantized()
    out = save(model, None, tmp_path_factory.mktemp("native") / "ckpt", format="native")
    return model, recipe, out


def test_native_config_records_format_overrides_and_recipe(native_dir):
    model, recipe, out = native_dir
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "lowbit" and qc["layout"] == "native" and qc["packing"] == "int32-lsb"
    assert (qc["format"], qc["bits"], qc["group_size"], qc["sym"]) == ("int", 4, 32, False)
    assert qc["method"] == "rtn" and qc["ignore"] == ["lm_head"]
    assert qc["overrides"] == [{"pattern": "mlp.down_proj", "format": DOWN.to_dict()}]
    assert Recipe.from_dict(qc["recipe"]) == recipe
    assert Recipe.from_yaml(out / "recipe.yaml") == recipe
    groups = {g["format"]["bits"]: g["modules"] for g in qc["groups"].values()}
    assert sorted(groups[8]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert groups[4]["model.layers.0.mlp.gate_proj"] == [128, 64]
    assert len(groups[4]) == 12


def test_native_tensors_are_quant_linear_buffers_plus_sentinel(native_dir):
    model, _, out = native_dir
    with safe_open(out / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        layer = "model.layers.0.mlp.up_proj"
        assert f.get_tensor(f"{layer}.weight").shape == (0,)
        m = dict(model.named_modules())[layer]
        assert torch.equal(f.get_tensor(f"{layer}.weight_packed"), m.weight_packed)
        assert torch.equal(f.get_tensor(f"{layer}.weight_zero"), m.weight_zero)
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight_packed").dtype == torch.int32
    assert "model.layers.0.mlp.down_proj.weight_zero" not in keys  # symmetric override


def test_from_pretrained_after_import_lowbit_gives_quant_linear(native_dir):
    model, recipe, out = native_dir
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert specs(loaded) == specs(model)
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.lowbit_recipe == recipe


def test_lowbit_load_native(native_dir):
    model, recipe, out = native_dir
    loaded, tokenizer = load(out)
    assert tokenizer is None and not loaded.training
    assert specs(loaded) == specs(model)
    assert torch.equal(logits(loaded), logits(model))


def test_save_pretrained_of_a_loaded_model_writes_native_again(native_dir, tmp_path):
    model, _, out = native_dir
    loaded = AutoModelForCausalLM.from_pretrained(out)
    loaded.save_pretrained(tmp_path / "again")
    with safe_open(tmp_path / "again" / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("model.layers.0.mlp.up_proj.weight").shape == (0,)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    assert torch.equal(logits(again), logits(model))


def test_loaded_model_resaves_in_both_formats(native_dir, tmp_path):
    model, _, out = native_dir
    loaded, _ = load(out)
    sym_only, _ = quantized(spec=FormatSpec(bits=4, sym=True, group_size=32))
    for fmt in ("native", "compressed-tensors"):
        source = loaded if fmt == "native" else load(save(sym_only, None, tmp_path / "src"))[0]
        reference = model if fmt == "native" else sym_only
        again, _ = load(save(source, None, tmp_path / fmt, format=fmt))
        assert specs(again) == specs(reference)
        assert torch.equal(logits(again), logits(reference))


def test_gpt2_goes_native_and_refuses_compressed_tensors(tmp_path):
    model, _ = quantized("gpt2", overrides=())
    with pytest.raises(InputError, match="Conv1D"):
        save(model, None, tmp_path / "ct", format="compressed-tensors")
    out = save(model, None, tmp_path / "auto")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "lowbit"
    assert torch.equal(logits(load(out)[0]), logits(model))


def test_tokenizer_and_extra_files_are_saved(tmp_path):
    from tiny_checkpoint import char_tokenizer

    model, _ = quantized()
    out = save(model, char_tokenizer(), tmp_path / "ckpt",
               extra_files={"report.json": '{"ppl": 1.0}', "plots/a.bin": b"\x00\x01"})
    assert (out / "report.json").read_text() == '{"ppl": 1.0}'
    assert (out / "plots" / "a.bin").read_bytes() == b"\x00\x01"
    _, tokenizer = load(out)
    assert tokenizer.decode(tokenizer("hello world")["input_ids"]) == "hello world"
