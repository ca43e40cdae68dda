"""`lowbit export` / `lowbit quantize --format`, and the compressed-tensors writer's scheme table.

compressed-tensors proofs run in a child process that never imports lowbit (test_io_child): the
exports load in plain transformers + compressed-tensors with lowbit's logits, and
compressed-tensors' own decompressor returns lowbit's weights.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationScheme
from torch import nn

import tiny_models
from lowbit.algorithms.gptq_step import GPTQConfig
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.cli import main
from lowbit.formats import FormatSpec
from lowbit.io import compressed_tensors as ct
from lowbit.io import inspect_checkpoint, load, save
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_child import run_child
from test_io_gguf import bpe_model


def rtn(spec, overrides=()):
    return Recipe(format=spec, steps=(RTNConfig(clip=None),), overrides=overrides)


def sym(bits, group=32):
    return FormatSpec(bits=bits, sym=True, group_size=group)


CT_CASES = {
    "w8-g32-asym": rtn(FormatSpec(bits=8, sym=False, group_size=32)),
    # GPTQ act-order keeps groups contiguous: actorder "static", no g_idx.
    "gptq-actorder-w4-g32-sym": Recipe(format=sym(4), steps=(GPTQConfig(act_order=True, clip=None),)),
    # three schemes, three config groups
    "w4+w8-down+w2-q": rtn(sym(4), (("mlp.down_proj", sym(8, -1)), ("self_attn.q_proj", sym(2)))),
}


@pytest.fixture(scope="module")
def ct_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    ids, jobs, out = tiny_models.input_ids(), [], {}
    for name, recipe in CT_CASES.items():
        model = tiny_models.build("llama")
        calib = tiny_models.input_ids(batch=4, seqlen=32, seed=5) if recipe.needs_calibration else None
        quantize_model(model, recipe, calib=calib, progress=False)
        with torch.no_grad():
            logits = model(ids).logits
        path = save(model, None, root / name, format="compressed-tensors")
        torch.save({"ids": ids, "logits": logits}, root / f"{name}.pt")
        jobs.append({"dir": str(path), "ref": str(root / f"{name}.pt")})
        out[name] = (model, path)
    report = run_child(jobs, root)
    assert not report["lowbit_imported"]
    return out, {r["dir"]: r for r in report["results"]}


@pytest.mark.parametrize("case", list(CT_CASES))
def test_plain_transformers_loads_every_scheme_with_our_logits(ct_cases, case):
    cases, results = ct_cases
    model, path = cases[case]
    r = results[str(path)]
    assert "error" not in r, r
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["ref_max_abs"])
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    weights = [g["weights"] for g in qc["config_groups"].values()]
    if case.startswith("gptq-actorder"):
        assert [w.get("actorder") for w in weights] == ["static"]
    if case == "w4+w8-down+w2-q":
        assert sorted(w["num_bits"] for w in weights) == [2, 4, 8]
    loaded, _ = load(path)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_models.input_ids()).logits, model(tiny_models.input_ids()).logits)


def test_compressed_tensors_decompressor_returns_our_act_order_weights(ct_cases):
    model, _ = ct_cases[0]["gptq-actorder-w4-g32-sym"]
    layer = model.model.layers[1].mlp.down_proj
    ct_layer = ct.weight_only_layer("down_proj", layer, model.lowbit_recipe)
    scheme = QuantizationScheme(targets=["Linear"], **ct_layer.scheme)
    assert scheme.weights.actorder == "static"
    out = PackedQuantizationCompressor.decompress(ct_layer.tensors, scheme)
    assert torch.equal(out["weight"], layer.dequantized_weight(torch.float32))


class FakeW8A8(nn.Module):
    """Stands in for a weight+activation module another file registers (issue 8's rows)."""

    def __init__(self, out_f, in_f):
        super().__init__()
        self.register_buffer("qweight", torch.ones(out_f, in_f, dtype=torch.int8))
        self.register_buffer("qscale", torch.full((out_f, 1), 0.5))


def fake_w8a8_layer(name, module, recipe):
    args = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False}
    scheme = {"weights": args, "input_activations": {**args, "strategy": "token", "dynamic": True},
              "output_activations": None, "format": "int-quantized"}
    return ct.CTLayer(scheme, {"weight": module.qweight, "weight_scale": module.qscale})


def test_a_registered_module_type_becomes_its_own_config_group(monkeypatch):
    monkeypatch.setitem(ct._SCHEMES, FakeW8A8, fake_w8a8_layer)
    model = tiny_models.build("llama")
    quantize_model(model, rtn(sym(4)), progress=False)
    model.model.layers[0].mlp.down_proj = FakeW8A8(64, 128)
    qc = ct.quantization_config(model)
    assert qc["format"] == "mixed-precision"
    groups = list(qc["config_groups"].values())
    assert groups[0]["targets"] == ["Linear"] and groups[0]["format"] == "pack-quantized"
    assert groups[1]["targets"] == ["model.layers.0.mlp.down_proj"] and groups[1]["format"] == "int-quantized"
    assert groups[1]["input_activations"]["dynamic"] is True
    sd = ct.state_dict(model)
    assert sd["model.layers.0.mlp.down_proj.weight"].dtype == torch.int8
    assert "model.layers.0.mlp.down_proj.qweight" not in sd
    assert "model.layers.1.mlp.down_proj.weight_packed" in sd


# ---- the command line ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tokenizer = bpe_model("llama")
    path = tmp_path_factory.mktemp("fp") / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_quantize_format_gptq_prints_deployability_and_exports_round_trip(model_dir, tmp_path):
    q = tmp_path / "q"
    r = run("quantize", model_dir, "--bits", 4, "--group-size", 32, "--sym", "--no-clip", "--format", "gptq",
            "--eval", "none", "--out", q, "--quiet")
    assert r.exit_code == 0, r.output
    assert "deploy  gptq:" in r.output and "GPTQ-Marlin" in r.output  # before the run
    assert "deploy  gptq: served by vLLM GPTQ" in r.output  # after the save
    assert inspect_checkpoint(q)["format"] == "gptq"
    reference, _ = load(q)
    ids = tiny_models.input_ids(seqlen=12)
    with torch.no_grad():
        want = reference(ids).logits
    for fmt in ("compressed-tensors", "awq", "gptq-v2", "native", "gguf"):
        out = tmp_path / fmt
        r = run("export", q, "--format", fmt, "--out", out)
        assert r.exit_code == 0, r.output
        assert f"saved   {out} ({fmt}," in r.output
        assert inspect_checkpoint(out)["format"] == fmt
        r = run("inspect", out)
        assert r.exit_code == 0 and f"format           {fmt}" in r.output
        loaded, tokenizer = load(out)
        assert tokenizer is not None
        with torch.no_grad():
            got = loaded(ids).logits
        tol = 1e-2 if fmt == "gguf" else 0.0  # GGUF: float16 embeddings
        assert (got - want).abs().max().item() <= tol * want.abs().max().item()


def test_failed_export_leaves_nothing_and_says_why_in_one_line(model_dir, tmp_path):
    q3 = tmp_path / "q3"
    assert run("quantize", model_dir, "--bits", 3, "--group-size", 32, "--no-clip", "--eval", "none",
               "--out", q3, "--quiet").exit_code == 0
    r = CliRunner().invoke(main, ["export", str(q3), "--format", "awq", "--out", str(tmp_path / "awq")])
    assert r.exit_code == 2 and "error: cannot save as awq:" in r.output and "4-bit codes" in r.output
    assert not (tmp_path / "awq").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_quantize_warns_before_the_run_when_no_engine_serves_the_scheme(model_dir, tmp_path):
    r = run("quantize", model_dir, "--bits", 3, "--group-size", 32, "--no-clip", "--format", "compressed-tensors",
            "--eval", "none", "--dry-run")
    assert r.exit_code == 0
    assert "warning: no serving engine (vLLM, llama.cpp) runs this scheme as compressed-tensors" in r.output
