"""Every architecture: quantize (RTN W4 g32 asym) -> save -> load -> the same logits.

- default output (compressed-tensors where it can be expressed) loads with plain transformers in
  a child process that never imports lowbit;
- the native layout loads through ``from_pretrained`` after ``import lowbit``, and *fails* in that
  child process (the sentinel's size mismatch), instead of giving a random model;
- ``lowbit.load`` reads both back into QuantLinear modules.

One child process checks every architecture, to keep the test fast.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import lowbit  # noqa: F401  (registers the quantizer)
import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.formats import FormatSpec
from lowbit.io import detect_format, load, save
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_child import run_child

# RTN without the clip search: the same format, and fast.
RECIPE = Recipe(format=FormatSpec(bits=4, sym=False, group_size=32), steps=(RTNConfig(clip=None),))
# compressed-tensors loads nn.Linear only; GPT-2's transformers.Conv1D layers go native.
NATIVE_ONLY = {"gpt2"}


@pytest.fixture(scope="module")
def roundtrips(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    ids = tiny_models.input_ids()
    saved, jobs = {}, []
    for arch in tiny_models.ARCHS:
        model = tiny_models.build(arch)
        quantize_model(model, RECIPE, progress=False)
        with torch.no_grad():
            logits = model(ids).logits
        torch.save({"ids": ids, "logits": logits}, root / f"{arch}.pt")
        default = save(model, None, root / f"{arch}-default")
        native = save(model, None, root / f"{arch}-native", format="native")
        saved[arch] = {"model": model, "logits": logits, "default": default, "native": native}
        jobs += [{"dir": str(d), "ref": str(root / f"{arch}.pt")} for d in (default, native)]
    report = run_child(jobs, root)
    assert not report["lowbit_imported"]
    return saved, {r["dir"]: r for r in report["results"]}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def logits_of(model):
    with torch.no_grad():
        return model(tiny_models.input_ids()).logits


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_default_output_loads_without_lowbit(roundtrips, arch):
    saved, child = roundtrips
    s = saved[arch]
    fmt = detect_format(s["default"])
    if arch in NATIVE_ONLY:
        assert fmt == "native"
        with pytest.raises(InputError, match="Conv1D"):
            save(s["model"], None, s["default"].parent / f"{arch}-ct", format="compressed-tensors")
        return
    assert fmt == "compressed-tensors"
    r = child[str(s["default"])]
    assert "error" not in r, r
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["ref_max_abs"])


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_native_without_lowbit_fails_loudly(roundtrips, arch):
    saved, child = roundtrips
    r = child[str(saved[arch]["native"])]
    assert r.get("error") == "RuntimeError", r
    assert "ignore_mismatched_sizes" in r["message"]


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_native_from_pretrained_after_import_lowbit(roundtrips, arch):
    saved, _ = roundtrips
    s = saved[arch]
    model = AutoModelForCausalLM.from_pretrained(s["native"])
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == \
        sum(isinstance(m, QuantLinear) for m in s["model"].modules())
    assert close(logits_of(model), s["logits"])


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_lowbit_load_both_layouts(roundtrips, arch):
    saved, _ = roundtrips
    s = saved[arch]
    n_quant = sum(isinstance(m, QuantLinear) for m in s["model"].modules())
    for d in (s["default"], s["native"]):
        model, _ = load(d)
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == n_quant
        assert close(logits_of(model), s["logits"])
