"""Chunked perplexity with the KV cache in the loop, the transformers peer, and the CLI."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from click.testing import CliRunner

import tiny_models
from lowbit.cli import main
from lowbit.eval import evaluate, format_table
from lowbit.eval.kv_eval import evaluate_kv, kv_rows
from lowbit.modules.kv_cache import QuantizedKVCache, kv_spec
from tiny_checkpoint import write_model_dir


@pytest.fixture(scope="module")
def windows():
    return tiny_models.input_ids(2, 64, seed=7)


@pytest.mark.parametrize("arch,chunk", [("llama", 16), ("llama", 24), ("gemma2", 5)])
def test_float_cache_chunked_equals_unchunked(arch, chunk, windows):
    """Chunks through the float cache are the unchunked forward (gemma2: chunks shorter and
    longer than its sliding window of 8; 24 leaves a short last chunk)."""
    model = tiny_models.build(arch)
    base, _ = evaluate_kv(model, windows, {}, chunk=chunk, progress=False)
    whole = evaluate(model, windows, progress=False)
    assert base.tokens == whole.tokens == 2 * 63
    # float32 logits summed over 126 tokens in float64: a few ulps of difference at most
    assert base.nll_sum == pytest.approx(whole.nll_sum, rel=1e-5)


def test_int8_and_int4_against_the_float_cache(windows):
    model = tiny_models.build("llama")
    specs = {"int8": kv_spec("int8", group_size=8), "int4": kv_spec("int4", group_size=8, residual=8)}
    caches = {name: (lambda m, s=s: QuantizedKVCache(m.config, s)) for name, s in specs.items()}
    base, results = evaluate_kv(model, windows, caches, chunk=8, progress=False)
    int8, int4 = results["int8"], results["int4"]
    assert 0 < int8.kl < int4.kl and int8.top1 > int4.top1
    assert abs(int8.ppl / base.ppl - 1) < 0.005
    # int8 quantizes every token at once: before chunk k, all 8k earlier tokens are quantized.
    chunks = range(0, 64, 8)
    share = sum(8 * s for s in chunks) / sum(8 * s + 8 * 9 // 2 for s in chunks)
    assert int8.quantized_key_share == pytest.approx(share)
    # int4 keeps 8 float tokens: keys are read quantized less often.
    assert 0 < int4.quantized_key_share < int8.quantized_key_share
    assert base.quantized_key_share == 0 and base.memory.saving == 1.0
    # head dim 16, group 8: 32 float16 bytes against codes + 2 x (scale, zero) = 16 + 6 and 8 + 6
    assert int8.memory.quantized_saving == pytest.approx(32 / 22)
    assert int4.memory.quantized_saving == pytest.approx(32 / 14)
    rows = kv_rows(base, results, specs)
    assert [r["kv_cache"] for r in rows] == [None, "int8", "int4"] and rows[1]["seqlen"] == 64
    table = format_table(rows).splitlines()
    assert "KV B/token" in table[0] and "| float |" in table[2] and "| int8 |" in table[3]


@pytest.mark.skipif(importlib.util.find_spec("optimum") is None or
                    importlib.util.find_spec("optimum.quanto") is None,
                    reason="optimum-quanto is not installed (pip install optimum-quanto): the "
                           "transformers QuantizedCache peer needs it")
def test_transformers_quantized_cache_peer_is_measured_the_same_way(windows):
    from transformers import QuantizedCache
    model = tiny_models.build("llama")
    peer = {"quanto": lambda m: QuantizedCache("quanto", m.config, nbits=4, q_group_size=16, residual_length=8)}
    base, results = evaluate_kv(model, windows, peer, chunk=8, progress=False)
    r = results["quanto"]
    assert r.kl > 0 and 0 < r.quantized_key_share < 1
    # quanto int4: 8 bytes of codes per 16-value head row, a scale and a shift per group (2 bytes
    # each at float16), keys and values, 2 heads, 2 layers.
    assert r.memory.quantized_bytes_per_token == pytest.approx(2 * 2 * 2 * (8 + 4))


# ---- the command line

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_eval_cli_with_kv_cache(model_dir):
    r = CliRunner().invoke(main, ["eval", str(model_dir), "--text", "builtin:pydoc", "--seqlen", "64",
                                  "--windows", "2", "--kv-cache", "int4", "--kv-group-size", "8",
                                  "--kv-residual", "8", "--kv-chunk", "16", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "chunks of 16" in r.output and "int4 g8 residual 8" in r.output
    lines = [line for line in r.output.splitlines() if line.startswith("|")]
    assert "KV B/token" in lines[0] and "| float |" in lines[2] and "| int4 |" in lines[3]


def test_generate_cli_with_kv_cache(model_dir):
    r = CliRunner().invoke(main, ["generate", str(model_dir), "Hello", "--max-new-tokens", "5", "--no-chat",
                                  "--kv-cache", "int8", "--kv-group-size", "8"])
    assert r.exit_code == 0, r.output
    assert "bytes per quantized token" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--kv-residual", "4"], "need --kv-cache"),
    (["--kv-cache", "int4", "--kv-group-size", "5"], "does not divide the head dimension 16"),
])
def test_eval_cli_kv_errors(model_dir, args, message):
    r = CliRunner().invoke(main, ["eval", str(model_dir), "--text", "builtin:pydoc", "--seqlen", "32",
                                  "--windows", "1", "--quiet", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and message in r.stderr
    assert "Traceback" not in r.output
