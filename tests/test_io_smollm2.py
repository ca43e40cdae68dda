"""SmolLM2-135M (real weights) through save -> plain transformers / lowbit.load. Slow."""
from __future__ import annotations

import pytest
import torch

from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.formats import FormatSpec
from lowbit.io import inspect_checkpoint, load, save
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe
from test_io_child import next_token_ppl, run_child

pytestmark = pytest.mark.slow


def test_smollm2_w4_g64_compressed_tensors_roundtrip(tmp_path, smollm2):
    model, tokenizer = smollm2
    # The first 4 of 30 blocks: real weights and widths (576 is not a multiple of 128), a
    # fraction of the quantize and load time.
    model.model.layers = model.model.layers[:4]
    model.config.num_hidden_layers = 4
    recipe = Recipe(format=FormatSpec(bits=4, sym=False, group_size=64), steps=(RTNConfig(clip=None),))
    quantize_model(model, recipe, progress=False)
    ids = tokenizer("def add(a, b):\n    return a + b", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    out = save(model, tokenizer, tmp_path / "smollm2-w4g64")
    torch.save({"ids": ids, "logits": logits}, tmp_path / "ref.pt")

    info = inspect_checkpoint(out)
    assert info["format"] == "compressed-tensors" and info["quantized_layers"] == 4 * 7
    assert info["bits_per_weight"] == pytest.approx(4 + (32 + 4) / 64)  # float32 scales, packed zeros

    report = run_child([{"dir": str(out), "ref": str(tmp_path / "ref.pt")}], tmp_path)
    (result,) = report["results"]
    assert not report["lowbit_imported"] and "error" not in result, result
    assert result["max_abs_diff"] <= 1e-4 * result["ref_max_abs"]

    loaded, loaded_tokenizer = load(out)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)
    assert loaded_tokenizer("def add")["input_ids"] == tokenizer("def add")["input_ids"]


def test_smollm2_gptq_w4_g64_export_loads_in_transformers_with_the_same_ppl(tmp_path, smollm2):
    """GPTQ W4 g64 (the default recipe) -> compressed-tensors -> plain transformers, PPL on lee-512
    windows equal to lowbit's own within 0.1% (the full-model, all-window check is
    bench/export_check.py: 37.2402 both). The first 4 blocks and a small calibration keep it quick."""
    from lowbit.data.text import lee_text, load_text
    from lowbit.data.windows import calibration_windows, eval_windows
    from lowbit.recipes import load_preset

    model, tokenizer = smollm2
    model.model.layers = model.model.layers[:4]
    model.config.num_hidden_layers = 4
    calib = calibration_windows(tokenizer, load_text("builtin:pydoc"), 8, 256)
    quantize_model(model, load_preset("w4a16-gptq"), calib=calib, progress=False)
    ids = eval_windows(tokenizer, lee_text(), 512, max_windows=2)
    with torch.no_grad():
        logits = model(ids).logits
    own_ppl = next_token_ppl(logits, ids)
    out = save(model, tokenizer, tmp_path / "smollm2-gptq", format="compressed-tensors")
    torch.save({"ids": ids, "logits": logits}, tmp_path / "ref.pt")

    report = run_child([{"dir": str(out), "ref": str(tmp_path / "ref.pt")}], tmp_path)
    (result,) = report["results"]
    assert not report["lowbit_imported"] and "error" not in result, result
    assert abs(result["ppl"] / own_ppl - 1) <= 1e-3, (result["ppl"], own_ppl)
