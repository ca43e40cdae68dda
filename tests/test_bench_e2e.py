"""bench/e2e.py's CPU smoke mode (``--device cpu --dry``): a tiny random Llama decoded through the
same static-cache loop as the GPU run, for bf16, W4A16 and W8A8, and the cached decode step itself
checked against an uncached forward (what makes the GPU timings mean decoding at all)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import e2e  # noqa: E402


@pytest.fixture(scope="module")
def dry_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # a random model from a config: nothing to fetch
        assert e2e.main(["--device", "cpu", "--dry", "--variants", ",".join(e2e.VARIANTS), "--out", str(out)]) == 0
    return out, json.loads((out / "e2e.json").read_text())


def test_dry_run_has_a_finite_row_for_every_variant_and_batch(dry_doc):
    _, doc = dry_doc
    assert {(r["variant"], r["batch"]) for r in doc["rows"]} == {
        (v, b) for v in e2e.VARIANTS for b in e2e.BATCHES}
    assert doc["notes"] == []
    for r in doc["rows"]:
        assert r["timing"] == "eager-cpu"
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms_per_step"])
        assert r["logits_finite"]
        assert r["speedup_vs_bf16"] > 0
        # Eager rerun from a reset state: exactly the same step, so set_position really rewinds
        # the cache (a stale write position would attend to one more slot).
        assert r["replay_token_match"] == 1.0 and r["replay_logits_rel_diff"] == 0.0
    by = {(r["variant"], r["batch"]): r for r in doc["rows"]}
    for b in e2e.BATCHES:
        assert by["bf16", b]["logits_rel_err_vs_bf16"] is None
        assert by["bf16", b]["speedup_vs_bf16"] == 1.0
        # int8 per-channel/per-token on a 2-layer model: a few percent; int4 g128 roughly 10x that.
        assert 0 < by["w8a8", b]["logits_rel_err_vs_bf16"] < 0.1
        assert 0 < by["w4a16", b]["logits_rel_err_vs_bf16"] < 0.5
        assert 0 <= by["w8a8", b]["greedy_match_vs_bf16"] <= 1


def test_dry_run_records_the_variants_and_renders(dry_doc):
    out, doc = dry_doc
    size = {v["variant"]: v["decoder_linear_bytes"] for v in doc["variants"]}
    kinds = {v["variant"]: v["decoder_linear_kind"] for v in doc["variants"]}
    assert kinds == {"bf16": ["Linear"], "w4a16": ["QuantLinear"], "w8a8": ["W8A8Linear"],
                     "w4a16-head": ["QuantLinear"], "w8a8-static-r4": ["W8A8Linear"], "fp8": ["FP8Linear"]}
    assert {v["variant"]: v["lm_head_kind"] for v in doc["variants"]} == {
        "bf16": "Linear", "w4a16": "Linear", "w8a8": "Linear", "w4a16-head": "QuantLinear",
        "w8a8-static-r4": "Linear", "fp8": "Linear"}
    # w8a8-static-r4 adds input scales and the two down_projs' int8 signs (512 each), no more;
    # fp8 holds one byte per weight as int8 does, with float32 row scales (bf16 for int8)
    assert size["w4a16"] == size["w4a16-head"] < size["w8a8"] < size["w8a8-static-r4"] < size["bf16"]
    assert size["w8a8"] < size["fp8"] < size["bf16"]
    assert 2 * 512 < size["w8a8-static-r4"] - size["w8a8"] < 4096
    assert all(v["decoder_linears"] == 2 * 7 for v in doc["variants"])
    for key in ("device", "torch", "transformers", "date", "command"):
        assert doc[key]
    assert doc["command"].endswith(f"--device cpu --dry --variants {','.join(e2e.VARIANTS)} --out $OUT")
    assert e2e.main(["--render", str(out / "e2e.json")]) == 0
    md = (out / "e2e.md").read_text()
    assert doc["command"] in md and "| w8a8 | 32 |" in md


def test_cached_decode_steps_match_an_uncached_forward():
    e2e.import_lowbit([])
    cfg = e2e.llama_config(dry=True, layers=None)
    device = torch.device("cpu")
    model = e2e.build_model(cfg, device, init_std=0.02, seed=0)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (3, 16), generator=g)
    first = torch.randint(0, cfg.vocab_size, (3, 1), generator=g)
    dec = e2e.Decoder(model, batch=3, max_len=32, device=device)
    dec.prefill(prompt)
    dec.ids.copy_(first)
    step1 = dec.step().float()
    second = dec.ids.clone()
    step2 = dec.step().float()
    assert torch.equal(second, step1.argmax(-1, keepdim=True))  # greedy token written back in place
    assert int(dec.position_ids[0, 0]) == 18
    with torch.no_grad():
        full = model(torch.cat([prompt, first, second], 1)).logits.float()
    # bf16 end to end: the cached and uncached attention round differently, by about 1e-3.
    assert e2e.rel_err(step1, full[:, -2]) < 1e-2
    assert e2e.rel_err(step2, full[:, -1]) < 1e-2


def test_fused_dry_run_decodes_the_same_tokens_and_unfuses(dry_doc, tmp_path):
    # --fuse stacks q/k/v and gate/up in every variant that allows it: same logits as unfused
    # (up to float summation order), and the model is back to its own modules afterwards.
    _, plain = dry_doc
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        assert e2e.main(["--device", "cpu", "--dry", "--fuse", "--batches", "1",
                         "--variants", "bf16,w4a16", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "e2e.json").read_text())
    assert doc["fused_projections"] is True
    assert {v["variant"]: v["fused_projections"] for v in doc["variants"]} == {"bf16": 4, "w4a16": 4}
    want = {r["variant"]: r for r in plain["rows"] if r["batch"] == 1}
    got = {r["variant"]: r for r in doc["rows"]}
    assert got["w4a16"]["logits_rel_err_vs_bf16"] == pytest.approx(
        want["w4a16"]["logits_rel_err_vs_bf16"], rel=1e-3)
    assert "stacked into one linear" in e2e.render_markdown(doc)


def test_inductor_pdl_needs_compile_and_is_recorded(monkeypatch):
    import torch._inductor.config as inductor_config

    with pytest.raises(SystemExit):  # argparse's error: --inductor-pdl without --compile
        e2e.parse_args(["--device", "cpu", "--dry", "--inductor-pdl"])
    args = e2e.parse_args(["--device", "cpu", "--dry", "--compile", "--inductor-pdl"])
    monkeypatch.setattr(inductor_config.triton, "enable_pdl", False)
    assert e2e.inductor_pdl(args) is True and inductor_config.triton.enable_pdl is True
    plain = e2e.parse_args(["--device", "cpu", "--dry", "--compile"])
    assert e2e.inductor_pdl(plain) is False
    assert plain.variants == ["bf16", "w4a16", "w8a8"]  # w4a16-head only on request
