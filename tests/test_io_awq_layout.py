"""AWQ GEMM layout (``quant_method: "awq"``): an independent decoder written from the format's
description (AutoAWQ's GEMM packing: eight 4-bit values per int32 along the output dimension,
nibble i holding column [0, 2, 4, 6, 1, 3, 5, 7][i] of its group of eight) unpacks our tensors to
lowbit's integers; lowbit reads its own files back; what AWQ cannot hold is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import awq_layout, load, save
from lowbit.io.files import CheckpointError
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_gptq_layout import random_layer

COLUMN_OF_NIBBLE = [0, 2, 4, 6, 1, 3, 5, 7]


def decode_awq_words(words: torch.Tensor) -> np.ndarray:
    """int32 ``(rows, n/8)`` → ``(rows, n)``: word c, nibble i (bits 4i..4i+3) is column 8c + ORDER[i]."""
    w = words.numpy().astype(np.int64) & 0xFFFFFFFF
    rows, n_words = w.shape
    out = np.zeros((rows, n_words * 8), dtype=np.int64)
    for c in range(n_words):
        for i in range(8):
            out[:, 8 * c + COLUMN_OF_NIBBLE[i]] = (w[:, c] >> (4 * i)) & 0xF
    return out


@pytest.mark.parametrize("spec", [FormatSpec(bits=4, sym=s, group_size=g) for s in (True, False) for g in (32, 96)],
                         ids=lambda s: s.label().replace(" ", "-"))
def test_independent_decoder_reads_our_integers(spec):
    m = random_layer(spec, out_f=48, in_f=96)
    t = awq_layout.layer_tensors(m)
    assert t["qweight"].shape == (96, 6) and t["qzeros"].shape == (96 // spec.group_size, 6)
    assert t["scales"].dtype == torch.float16 and t["qweight"].dtype == t["qzeros"].dtype == torch.int32
    codes, zeros = decode_awq_words(t["qweight"]), decode_awq_words(t["qzeros"])
    assert np.array_equal(codes, m.codes().numpy().T)
    want_zero = m.weight_zero if m.weight_zero is not None else torch.full(m.weight_scale.shape, 8)
    assert np.array_equal(zeros, want_zero.numpy().T)
    g = np.arange(96) // spec.group_size
    w = (codes - zeros[g]) * t["scales"].float().numpy()[g]
    assert np.allclose(w.T, m.dequantized_weight(torch.float64).numpy(), rtol=0, atol=1e-6)


def quantized(arch: str, spec: FormatSpec, overrides=()):
    model = tiny_models.build(arch)
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides), progress=False)
    return model


@pytest.mark.parametrize("arch, spec", [
    ("llama", FormatSpec(bits=4, sym=False, group_size=32, scale_dtype="float16")),
    ("phi3", FormatSpec(bits=4, sym=True, group_size=32, scale_dtype="float16")),
    ("opt", FormatSpec(bits=4, sym=False, group_size=64)),  # biases: float32 scales (see test_io_gptq_layout)
], ids=["llama-asym", "phi3-sym", "opt-bias"])
def test_lowbit_reads_its_awq_files_back(tmp_path, arch, spec):
    model = quantized(arch, spec)
    path = save(model, None, tmp_path / "awq", format="awq")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": spec.group_size, "zero_point": not spec.sym,
                  "version": "gemm", "modules_to_not_convert": ["lm_head"]}
    loaded, _ = load(path)
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert ours.keys() == theirs.keys()
    for n, m in ours.items():
        assert theirs[n].spec.sym == spec.sym and theirs[n].spec.group_size == spec.group_size
        assert torch.equal(theirs[n].weight_packed, m.weight_packed)
        assert torch.equal(theirs[n].weight_scale, m.weight_scale.half().float())
        if m.weight_zero is not None:
            assert torch.equal(theirs[n].weight_zero, m.weight_zero)
    ids = tiny_models.input_ids()
    with torch.no_grad():
        got, want = loaded(ids).logits, model(ids).logits
    assert torch.equal(got, want) if spec.scale_dtype == "float16" else torch.allclose(got, want, atol=1e-2)


@pytest.mark.parametrize("spec, overrides, message", [
    (FormatSpec(bits=3, sym=False, group_size=32), (), "4-bit codes"),
    (FormatSpec(bits=4, sym=False, group_size=-1), (), "4-bit codes with group scales"),
    (FormatSpec(bits=4, sym=False, group_size=32), (("mlp.down_proj", FormatSpec(bits=8, group_size=32)),),
     "several formats"),
], ids=["3-bit", "per-channel", "overrides"])
def test_what_awq_cannot_hold_is_refused_before_writing(tmp_path, spec, overrides, message):
    model = quantized("llama", spec, overrides)
    with pytest.raises(InputError, match=message):
        save(model, None, tmp_path / "awq", format="awq")
    assert not (tmp_path / "awq").exists()


def test_broken_awq_file_is_refused(tmp_path):
    path = save(quantized("llama", FormatSpec(bits=4, sym=False, group_size=32)), None, tmp_path / "awq", format="awq")
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.qzeros"] = tensors["model.layers.1.mlp.down_proj.qzeros"][:1].contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.down_proj.qzeros has shape \[1, 8\], expected \[4, 8\]"):
        load(path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["bits"] = 8
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'awq'.*4-bit GEMM"):
        load(path)
