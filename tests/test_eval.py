"""Evaluator numerics against float64 hand computations, size accounting, and the report."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import tiny_models
from lowbit.algorithms.rtn_step import RTNConfig
from lowbit.errors import InputError
from lowbit.eval import (
    before_after_rows, bits_per_weight, checkpoint_size_mb, compare_logits, evaluate, format_table,
    model_size_mb, weight_count, write_report,
)
from lowbit.formats import FormatSpec
from lowbit.modules import QuantLinear
from lowbit.quantize import quantize_model
from lowbit.recipes import Recipe


@pytest.fixture(scope="module")
def model():
    return tiny_models.build("llama")


@pytest.fixture(scope="module")
def windows():
    return tiny_models.input_ids(batch=5, seqlen=24, seed=7)


def _hand_stats(logits: torch.Tensor, ids: torch.Tensor, ref: torch.Tensor):
    """Float64, one position at a time: NLL sum, KL(ref || q) sum and top-1 agreements."""
    nll = kl = 0.0
    agree = 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            q = logits[b, t].double()
            p = ref[b, t].double()
            logq = q - torch.logsumexp(q, 0)
            logp = p - torch.logsumexp(p, 0)
            nll -= logq[ids[b, t + 1]].item()
            kl += (logp.exp() * (logp - logq)).sum().item()
            agree += int(q.argmax() == p.argmax())
    return nll, kl, agree


def _perturbed(model, scale=0.05, seed=11):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.layers.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp_min(1e-3))
    return other


def test_ppl_matches_float64_hand_computation(model, windows):
    result = evaluate(model, windows, progress=False)
    with torch.no_grad():
        logits = model(windows).logits
    nll, _, _ = _hand_stats(logits, windows, logits)
    assert result.tokens == 5 * 23 and result.windows == 5 and result.seqlen == 24
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(nll / result.tokens), rel=1e-5)
    assert result.kl is None and result.top1 is None and result.ref_ppl is None


def test_batching_does_not_change_results(model, windows):
    one = evaluate(model, windows, batch_size=1, progress=False)
    three = evaluate(model, windows, batch_size=3, progress=False)
    assert three.nll_sum == pytest.approx(one.nll_sum, rel=1e-5)


def test_model_against_itself_has_zero_kl_and_full_agreement(model, windows):
    twin = copy.deepcopy(model)
    result = evaluate(model, windows, reference=twin, progress=False)
    assert result.kl == pytest.approx(0.0, abs=1e-7)
    assert result.top1 == 1.0
    assert result.ref_ppl == pytest.approx(result.ppl, rel=1e-6)
    same = evaluate(model, windows, reference=model, progress=False)
    assert same.kl == 0.0 and same.top1 == 1.0 and same.ppl == pytest.approx(result.ppl, rel=1e-6)


def test_perturbed_copy_kl_and_top1_match_hand_computation(model, windows):
    other = _perturbed(model)
    result = evaluate(other, windows, reference=model, batch_size=2, progress=False)
    with torch.no_grad():
        q, ref = other(windows).logits, model(windows).logits
    nll, kl, agree = _hand_stats(q, windows, ref)
    ref_nll, _, _ = _hand_stats(ref, windows, ref)
    assert result.kl > 1e-4
    assert result.kl == pytest.approx(kl / result.tokens, rel=1e-4)
    assert result.top1 == agree / result.tokens and result.top1 < 1.0
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.ref_ppl == pytest.approx(math.exp(ref_nll / result.tokens), rel=1e-5)


def test_compare_logits_on_random_logits():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 37, (3, 9), generator=g)
    logits, ref = torch.randn(3, 9, 37, generator=g) * 3, torch.randn(3, 9, 37, generator=g) * 3
    stats = compare_logits(logits, ids, ref)
    nll, kl, agree = _hand_stats(logits, ids, ref)
    assert stats.tokens == 24
    assert stats.nll_sum == pytest.approx(nll, rel=1e-6)
    assert stats.kl_sum == pytest.approx(kl, rel=1e-5)
    assert stats.top1_agree == agree


@pytest.mark.parametrize("bad", [torch.zeros(0, 8, dtype=torch.long), torch.zeros(8, dtype=torch.long),
                                 torch.zeros(2, 1, dtype=torch.long)])
def test_bad_windows_are_input_errors(model, bad):
    with pytest.raises(InputError):
        evaluate(model, bad, progress=False)


# ---- size -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, sym, group", [(4, False, 32), (3, False, 32), (8, True, -1), (2, True, 0)])
def test_bits_per_weight_counts_codes_scales_and_zeros(bits, sym, group):
    model = tiny_models.build("llama")
    assert bits_per_weight(model) is None and weight_count(model) == 0
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n.startswith("model.layers.")}
    spec = FormatSpec(bits=bits, sym=sym, group_size=group)
    quantize_model(model, Recipe(format=spec, steps=(RTNConfig(clip=None),)), progress=False)
    n_weights = sum(m.in_features * m.out_features for m in linears.values())
    assert weight_count(model) == n_weights
    # Independent count from the shapes: float32 scales, zeros at code width, per-row padding to words.
    expected = 0
    for m in linears.values():
        blocks = 1 if group == 0 else m.out_features * (m.in_features // group if group > 0 else 1)
        expected += m.out_features * math.ceil(m.in_features * bits / 32) * 32
        expected += blocks * (32 + (0 if sym else bits))
    assert bits_per_weight(model) == pytest.approx(expected / n_weights)
    if group > 0:  # no padding at these widths: the spec's own formula agrees
        assert bits_per_weight(model) == pytest.approx(spec.bits_per_weight(64, scale_bits=32))
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)


def test_checkpoint_size_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1_500_000)
    (tmp_path / "extra.bin").write_bytes(b"\0" * 500_000)
    (tmp_path / "config.json").write_text("{}" * 1000)
    assert checkpoint_size_mb(tmp_path) == pytest.approx(2.0)
    assert checkpoint_size_mb(tmp_path / "extra.bin") == pytest.approx(0.5)
    with pytest.raises(InputError, match="checkpoint not found"):
        checkpoint_size_mb(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no weight files"):
        checkpoint_size_mb(empty)


def test_model_size_counts_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 10)
            self.head = nn.Linear(10, 100, bias=False)
            self.head.weight = self.emb.weight
            self.register_buffer("table", torch.zeros(50, dtype=torch.float64))
            self.register_buffer("scratch", torch.zeros(1000), persistent=False)

    assert model_size_mb(Tied()) == pytest.approx((100 * 10 * 4 + 50 * 8) / 1e6)


# ---- report ---------------------------------------------------------------------------------

def test_format_table_computes_delta_against_the_first_row():
    rows = [{"name": "FP", "ppl": 10.0, "size_mb": 538.1, "bits_per_weight": 32.0},
            {"name": "w4", "ppl": 12.5, "kl": 0.12345, "top1": 0.8512, "size_mb": 150.0,
             "bits_per_weight": 4.5625}]
    table = format_table(rows).splitlines()
    assert table[0] == "| model | PPL | ΔPPL | KL | top-1 | size MB | bits/weight |"
    assert table[2] == "| FP | 10.00 | — | — | — | 538.1 | 32.000 |"
    assert table[3] == "| w4 | 12.50 | +25.0% | 0.1235 | 85.1% | 150.0 | 4.562 |"


def test_write_report_json_and_markdown(tmp_path, model, windows):
    result = evaluate(_perturbed(model), windows, reference=model, progress=False)
    rows = before_after_rows(result, "w4a16-rtn", fp_size_mb=1.5, quant_size_mb=0.4,
                             fp_bits=32.0, quant_bits=4.5625)
    layers = [{"name": "model.layers.0.mlp.down_proj", "shape": [64, 128], "format": "int4 asym g32",
               "weight_mse": 1.5e-5, "seconds": 0.01}]
    report = {"model": "tiny", "recipe": {"name": "w4a16-rtn"}, "text": "builtin:lee",
              "windows": result.windows, "seqlen": result.seqlen, "tokens": result.tokens,
              "rows": rows, "eval": result, "quantization": {"seconds": 0.2, "layers": layers},
              "broken": float("inf")}
    json_path, md_path = write_report(tmp_path / "out", report)
    data = json.loads(json_path.read_text())
    assert data["rows"][0]["ppl"] == pytest.approx(result.ref_ppl)
    assert data["rows"][1]["kl"] == pytest.approx(result.kl)
    assert data["eval"]["tokens"] == result.tokens
    assert data["broken"] is None
    md = md_path.read_text()
    delta = f"{(result.ppl / result.ref_ppl - 1) * 100:+.1f}%"
    assert f"| w4a16-rtn | {result.ppl:.2f} | {delta} |" in md
    assert "## Layers" in md and "| model.layers.0.mlp.down_proj | 64×128 | int4 asym g32 | 1.5e-05 |" in md
    assert "- recipe: `w4a16-rtn`" in md and "- predicted tokens: `115`" in md


@pytest.mark.parametrize("preset", ["w8a8-int8", "w8a8-int8-static", "w8a8-fp8"])
def test_bits_per_weight_of_weight_and_activation_layers(preset):
    from lowbit.recipes import load_preset

    model = tiny_models.build("llama")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")}
    quantize_model(model, load_preset(preset), calib=tiny_models.input_ids(2, 16, seed=1), progress=False)
    n_weights = sum(m.in_features * m.out_features for m in linears.values())
    assert weight_count(model) == n_weights
    # 8-bit codes, one float32 scale per output row, one float32 input scale per static layer
    static = not load_preset(preset).activations.dynamic
    expected = sum(8 * m.in_features * m.out_features + 32 * m.out_features + (32 if static else 0)
                   for m in linears.values())
    assert bits_per_weight(model) == pytest.approx(expected / n_weights)
