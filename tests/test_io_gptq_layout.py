"""GPTQ layout (``quant_method: "gptq"``): an independent decoder written from the format's
description (GPTQModel's qlinear docs: qweight packed along the input dimension, qzeros along the
output dimension, v1 storing zero − 1) unpacks our tensors to lowbit's integers; lowbit reads its
own files back to identical modules; broken files are refused with one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from lowbit.algorithms.quantized_weight import QuantizedWeight
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import inspect_checkpoint, load, save
from lowbit.io import gptq_layout
from lowbit.io.files import CheckpointError
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe


def random_layer(spec: FormatSpec, out_f: int = 48, in_f: int = 96, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    groups = spec.n_groups(in_f)
    codes = torch.randint(0, spec.qmax + 1, (out_f, in_f), generator=g).to(torch.uint8)
    scale = (torch.rand(out_f, groups, generator=g) + 0.01).half()
    zero = None if spec.sym else torch.randint(1, spec.qmax + 1, (out_f, groups), generator=g).to(torch.int32)
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec))


def read_stream(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Element k of each column starts at bit k·bits of that column's 32-bit words, low bit first."""
    words = words.astype(np.int64) & 0xFFFFFFFF
    out = np.zeros((n, words.shape[1]), dtype=np.int64)
    for k in range(n):
        w, off = divmod(k * bits, 32)
        v = words[w] >> off
        if off + bits > 32:
            v |= words[w + 1] << (32 - off)
        out[k] = v & ((1 << bits) - 1)
    return out


def decode_gptq(t: dict, bits: int, version: int):
    """``(codes (in, out), zeros (groups, out), scales (groups, out))`` of one layer."""
    in_f, out_f = t["g_idx"].numel(), t["qweight"].shape[1]
    codes = read_stream(t["qweight"].numpy(), bits, in_f)
    zeros = read_stream(t["qzeros"].numpy().T, bits, out_f).T + (1 if version == 1 else 0)
    return codes, zeros, t["scales"].float().numpy()


SPECS = [FormatSpec(bits=b, sym=s, group_size=g) for b in (2, 3, 4, 8) for s in (True, False) for g in (32, -1)]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label().replace(" ", "-"))
def test_independent_decoder_reads_our_integers(spec, version):
    m = random_layer(spec)
    t = gptq_layout.layer_tensors(m, version)
    codes, zeros, scales = decode_gptq(t, spec.bits, version)
    assert t["qweight"].dtype == t["qzeros"].dtype == t["g_idx"].dtype == torch.int32
    assert t["scales"].dtype == torch.float16
    assert np.array_equal(codes, m.codes().numpy().T)
    want_zero = m.weight_zero if m.weight_zero is not None else torch.full(m.weight_scale.shape, 1 << (spec.bits - 1))
    assert np.array_equal(zeros, want_zero.numpy().T)
    assert np.array_equal(scales, m.weight_scale.float().numpy().T)
    group = spec.group_size if spec.group_size > 0 else m.in_features
    assert torch.equal(t["g_idx"], torch.arange(m.in_features, dtype=torch.int32) // group)
    # The arithmetic of the format gives lowbit's weights.
    w = (codes - zeros[t["g_idx"].numpy()]) * scales[t["g_idx"].numpy()]
    assert np.allclose(w.T, m.dequantized_weight(torch.float64).numpy(), rtol=0, atol=1e-6)


def quantized(arch: str, spec: FormatSpec, overrides=()):
    model = tiny_models.build(arch)
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides), progress=False)
    return model


F16 = dict(scale_dtype="float16")
# (arch, format, default spec, overrides): mixed formats go to "dynamic"; Conv1D; biases. Models
# with biases keep float32 scales (a float16-scale QuantLinear holds a float16 bias), so their
# files hold rounded scales and the logits agree to float16 precision only.
CASES = {
    "llama-v1-w4sym+w8asym-down": ("llama", "gptq", FormatSpec(bits=4, sym=True, group_size=32, **F16),
                                   (("mlp.down_proj", FormatSpec(bits=8, sym=False, group_size=-1, **F16)),)),
    "qwen2-v2-w3asym": ("qwen2", "gptq-v2", FormatSpec(bits=3, sym=False, group_size=32), ()),
    "gpt2-v1-w2asym-channel": ("gpt2", "gptq", FormatSpec(bits=2, sym=False, group_size=-1), ()),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    out = {}
    for case, (arch, fmt, spec, overrides) in CASES.items():
        model = quantized(arch, spec, overrides)
        out[case] = (model, save(model, None, root / case, format=fmt), fmt)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_lowbit_reads_its_gptq_files_to_identical_modules(saved, case):
    model, path, fmt = saved[case]
    loaded, _ = load(path)
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert ours.keys() == theirs.keys()
    for n, m in ours.items():
        q = theirs[n]
        assert (q.spec.bits, q.spec.sym, q.spec.group_size) == (m.spec.bits, m.spec.sym, m.spec.group_size)
        assert torch.equal(q.weight_packed, m.weight_packed)
        assert torch.equal(q.weight_scale, m.weight_scale.half().float())  # float16, widened exactly
        assert (q.weight_zero is None) == (m.weight_zero is None)
        if m.weight_zero is not None:
            assert torch.equal(q.weight_zero, m.weight_zero)
    ids = tiny_models.input_ids()
    with torch.no_grad():
        got, want = loaded(ids).logits, model(ids).logits
    exact = all(m.weight_scale.dtype == torch.float16 for m in ours.values())
    assert torch.equal(got, want) if exact else torch.allclose(got, want, rtol=0, atol=1e-2)
    info = inspect_checkpoint(path)
    assert info["format"] == fmt and info["quantized_layers"] == len(ours)


def test_config_records_version_and_overrides(saved):
    import json
    _, path, _ = saved["llama-v1-w4sym+w8asym-down"]
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (4, 32, True, False)
    assert qc["dynamic"] == {r"+:^model\.layers\.0\.mlp\.down_proj$": {"bits": 8, "group_size": -1, "sym": False},
                             r"+:^model\.layers\.1\.mlp\.down_proj$": {"bits": 8, "group_size": -1, "sym": False}}
    assert gptq_layout.spec_for(qc, "model.layers.1.mlp.down_proj").bits == 8
    assert gptq_layout.spec_for(qc, "model.layers.1.mlp.up_proj").bits == 4
    assert gptq_layout.spec_for({**qc, "dynamic": {"-:.*up_proj": {}}}, "model.layers.1.mlp.up_proj") is None


def test_version1_cannot_store_zero_point_zero_but_version2_can(tmp_path):
    model = quantized("llama", FormatSpec(bits=4, sym=False, group_size=32, **F16))
    layer = model.model.layers[0].mlp.up_proj
    layer.weight_zero[0, 0] = 0
    with pytest.raises(InputError, match="gptq-v2"):
        save(model, None, tmp_path / "v1", format="gptq")
    assert not (tmp_path / "v1").exists()
    loaded, _ = load(save(model, None, tmp_path / "v2", format="gptq-v2"))
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight_zero, layer.weight_zero)


def test_per_tensor_scales_are_refused(tmp_path):
    model = quantized("llama", FormatSpec(bits=4, sym=True, group_size=0))
    with pytest.raises(InputError, match="per tensor"):
        save(model, None, tmp_path / "t", format="gptq")


def rewrite(src, dst, edit):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.self_attn.o_proj.qzeros"), "missing tensor model.layers.1.self_attn.o_proj.qzeros"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.scales": t["model.layers.0.mlp.up_proj.scales"][:, :64].contiguous()}),
     "model.layers.0.mlp.up_proj.scales has shape"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.g_idx": t["model.layers.0.mlp.up_proj.g_idx"].flip(0)}),
     "g_idx is not k // group_size"),
    (lambda t: t.pop("model.layers.0.input_layernorm.weight"), "no tensor model.layers.0.input_layernorm.weight"),
], ids=["missing-qzeros", "wrong-scales-shape", "act-order-g_idx", "missing-float-tensor"])
def test_broken_gptq_files_are_refused(saved, tmp_path, edit, message):
    _, path, _ = saved["llama-v1-w4sym+w8asym-down"]
    bad = rewrite(path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message) as e:
        load(bad)
    assert "\n" not in str(e.value)
