"""compressed-tensors pack-quantized output, checked against compressed-tensors' own code and
against plain transformers in a process that never imports lowbit."""
from __future__ import annotations

import json

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.algorithms.quantized_weight import QuantizedWeight
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import compressed_tensors as ct
from lowbit.io import load, save
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_child import run_child

SPECS = [FormatSpec(bits=b, sym=s, group_size=g) for b in (2, 3, 4, 8) for s in (True, False) for g in (32, -1, 0)]


def random_quant_linear(spec: FormatSpec, out_f: int = 40, in_f: int = 96, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    rows, groups = (1, 1) if spec.granularity == "tensor" else (out_f, spec.n_groups(in_f))
    codes = torch.randint(0, spec.qmax + 1, (out_f, in_f), generator=g).to(torch.uint8)
    scale = torch.rand(rows, groups, generator=g) + 0.01
    zero = None if spec.sym else torch.randint(0, spec.qmax + 1, (rows, groups), generator=g).to(torch.int32)
    return QuantLinear.from_quantized(QuantizedWeight(codes, scale, zero, spec))


def scheme_for(spec: FormatSpec) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], weights=ct.weight_args(spec), format="pack-quantized")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label().replace(" ", "-"))
def test_compressed_tensors_unpacks_our_integers(spec):
    """CT's own unpack gives our codes and zeros (signed: minus 2^(bits-1)); its decompress gives our weights."""
    m = random_quant_linear(spec)
    t = ct.layer_tensors(m)
    offset = 1 << (spec.bits - 1)
    codes = unpack_from_int32(t["weight_packed"], spec.bits, t["weight_shape"])
    assert torch.equal(codes.to(torch.int32), m.codes().to(torch.int32) - offset)
    if not spec.sym and spec.granularity != "tensor":
        zp = unpack_from_int32(t["weight_zero_point"], spec.bits, m.weight_zero.shape, packed_dim=0)
        assert torch.equal(zp.to(torch.int32), m.weight_zero - offset)
    elif not spec.sym:
        assert t["weight_zero_point"].dtype == torch.int8
        assert t["weight_zero_point"].item() == m.weight_zero.item() - offset
    else:
        assert "weight_zero_point" not in t
    out = PackedQuantizationCompressor.decompress(t, scheme_for(spec))
    assert torch.equal(out["weight"], m.dequantized_weight(torch.float32))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.granularity != "tensor"],
                         ids=lambda s: s.label().replace(" ", "-"))
def test_compressed_tensors_compress_writes_our_tensors(spec):
    """Given our scales and zeros, CT's compressor produces exactly the words we store."""
    m = random_quant_linear(spec, seed=1)
    ours = ct.layer_tensors(m)
    state = {"weight": m.dequantized_weight(torch.float64).float(), "weight_scale": m.weight_scale}
    if not spec.sym:
        state["weight_zero_point"] = (m.weight_zero - (1 << (spec.bits - 1))).to(torch.int8)
    theirs = PackedQuantizationCompressor.compress(state, scheme_for(spec))
    assert torch.equal(theirs["weight_packed"], ours["weight_packed"])
    assert torch.equal(theirs["weight_shape"], ours["weight_shape"])
    if not spec.sym:
        assert torch.equal(theirs["weight_zero_point"], ours["weight_zero_point"])
        assert torch.equal(pack_to_int32(state["weight_zero_point"], spec.bits, packed_dim=0),
                           ours["weight_zero_point"])


def quantized_llama(spec: FormatSpec, overrides=()):
    model = tiny_models.build("llama")
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides), progress=False)
    return model


def test_config_is_what_compressed_tensors_serialises():
    spec = FormatSpec(bits=4, sym=False, group_size=32)
    model = quantized_llama(spec)
    qc = ct.quantization_config(model)
    assert set(qc) == {"version", "quant_method", "sparsity_config", "transform_config", "config_groups",
                       "format", "quantization_status", "kv_cache_scheme", "global_compression_ratio",
                       "ignore", "moe_sparsity_config", "dequantize"}
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["quantization_status"] == "compressed" and qc["ignore"] == ["lm_head"]
    assert qc["dequantize"] is True  # asymmetric group: see lowbit.io.compressed_tensors
    group = qc["config_groups"]["group_0"]
    assert group["targets"] == ["Linear"] and group["format"] == "pack-quantized"
    assert group["weights"] == {"num_bits": 4, "type": "int", "symmetric": False, "group_size": 32,
                                "strategy": "group", "dynamic": False, "zp_dtype": "torch.int8"}
    # Round trip through compressed-tensors' schema changes nothing it knows about.
    parsed = QuantizationConfig.model_validate(qc).model_dump(mode="json", exclude=["quant_method"])
    assert parsed == {k: v for k, v in qc.items() if k in parsed}
    sym = ct.quantization_config(quantized_llama(FormatSpec(bits=4, sym=True, group_size=-1)))
    assert "dequantize" not in sym and "zp_dtype" not in sym["config_groups"]["group_0"]["weights"]
    assert sym["config_groups"]["group_0"]["weights"]["strategy"] == "channel"


def test_overrides_become_config_groups_with_exact_names():
    model = quantized_llama(FormatSpec(bits=4, sym=True, group_size=32),
                            overrides=(("mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),))
    groups = ct.quantization_config(model)["config_groups"]
    assert groups["group_0"]["targets"] == ["Linear"] and groups["group_0"]["weights"]["num_bits"] == 4
    assert groups["group_1"]["targets"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert groups["group_1"]["weights"]["num_bits"] == 8


def test_asymmetric_mixed_formats_refused_for_compressed_tensors(tmp_path):
    model = quantized_llama(FormatSpec(bits=4, sym=False, group_size=32),
                            overrides=(("mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),))
    with pytest.raises(InputError, match="several formats"):
        save(model, None, tmp_path / "ct", format="compressed-tensors")
    assert not (tmp_path / "ct").exists()
    out = save(model, None, tmp_path / "auto")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "lowbit"


CASES = {
    "w4-g32-asym": (FormatSpec(bits=4, sym=False, group_size=32), ()),
    "w4-g32-sym": (FormatSpec(bits=4, sym=True, group_size=32), ()),
    "w3-g32-asym": (FormatSpec(bits=3, sym=False, group_size=32), ()),
    "w3-channel-sym": (FormatSpec(bits=3, sym=True, group_size=-1), ()),
    "w2-channel-asym": (FormatSpec(bits=2, sym=False, group_size=-1), ()),
    "w8-channel-sym": (FormatSpec(bits=8, sym=True, group_size=-1), ()),
    "w4-tensor-asym": (FormatSpec(bits=4, sym=False, group_size=0), ()),
    "w4-g32-sym+w8-down": (FormatSpec(bits=4, sym=True, group_size=32),
                           (("mlp.down_proj", FormatSpec(bits=8, sym=True, group_size=-1)),)),
}


@pytest.fixture(scope="module")
def saved_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    cases, jobs = {}, []
    ids = tiny_models.input_ids()
    for name, (spec, overrides) in CASES.items():
        model = quantized_llama(spec, overrides)
        with torch.no_grad():
            logits = model(ids).logits
        out = save(model, None, root / name, format="compressed-tensors")
        torch.save({"ids": ids, "logits": logits}, root / f"{name}.pt")
        cases[name] = (model, out, logits)
        jobs.append({"dir": str(out), "ref": str(root / f"{name}.pt")})
    report = run_child(jobs, root)
    return cases, {r["dir"]: r for r in report["results"]}, report["lowbit_imported"]


@pytest.mark.parametrize("case", list(CASES))
def test_plain_transformers_loads_compressed_tensors(saved_cases, case):
    cases, results, lowbit_imported = saved_cases
    _, out, _ = cases[case]
    r = results[str(out)]
    assert not lowbit_imported
    assert "error" not in r, r
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["ref_max_abs"])


@pytest.mark.parametrize("case", list(CASES))
def test_lowbit_load_compressed_tensors_gives_same_integers(saved_cases, case):
    cases, _, _ = saved_cases
    model, out, logits = cases[case]
    loaded, tokenizer = load(out)
    assert tokenizer is None
    ours = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    theirs = {n: m for n, m in loaded.named_modules() if isinstance(m, QuantLinear)}
    assert ours.keys() == theirs.keys()
    for n, m in ours.items():
        assert theirs[n].spec == m.spec
        assert torch.equal(theirs[n].weight_packed, m.weight_packed)
        assert torch.equal(theirs[n].weight_scale, m.weight_scale)
        assert (m.weight_zero is None) == (theirs[n].weight_zero is None)
        if m.weight_zero is not None:
            assert torch.equal(theirs[n].weight_zero, m.weight_zero)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_models.input_ids()).logits, logits)


def test_lowbit_load_reads_what_compressed_tensors_itself_writes(tmp_path):
    """The llm-compressor save path (ModelCompressor: compress_model, save_pretrained,
    update_config) on qparams we chose, read back by lowbit.load into the same integers."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationArgs, apply_quantization_config

    from lowbit.algorithms.rtn import rtn

    spec = FormatSpec(bits=4, sym=False, group_size=32)
    model = tiny_models.build("llama")
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=False, strategy="group", group_size=32))
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    expected = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if getattr(m, "quantization_scheme", None) is None:
                continue
            qw = rtn(m.weight, spec, None)
            expected[name] = qw
            m.weight.copy_(qw.dequantize(torch.float32))
            m.weight_scale.copy_(qw.scale)
            m.weight_zero_point.copy_((qw.zero - 8).to(torch.int8))
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "ct")
    compressor.update_config(tmp_path / "ct")

    loaded, _ = load(tmp_path / "ct")
    for name, qw in expected.items():
        m = dict(loaded.named_modules())[name]
        assert isinstance(m, QuantLinear) and m.spec == spec
        assert torch.equal(m.codes(), qw.codes) and torch.equal(m.weight_zero, qw.zero)
        assert torch.equal(m.weight_scale, qw.scale)
