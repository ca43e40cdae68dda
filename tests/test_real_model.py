"""SmolLM2-135M (the built-in model) through the sources, text windows and evaluator. Slow: real weights."""
from __future__ import annotations

import random

import pytest
import torch

from lowbit.data import eval_windows, load_text, sample_windows, token_ids
from lowbit.errors import InputError
from lowbit.eval import evaluate
from lowbit.sources import DEFAULT_MODEL, load_model, resolve_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_shared):
    """Read-only here: these tests never modify the model."""
    return smollm2_shared


def test_builtin_loads_as_float_llama(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and not model.training
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert next(model.parameters()).dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size == 49152


def test_calibration_windows_follow_pydoc_128x512(smollm2):
    _, tokenizer = smollm2
    ids = token_ids(tokenizer, load_text("builtin:pydoc"))
    windows = sample_windows(ids, 128, 512, seed=0)
    assert windows.shape == (128, 512) and windows.dtype == torch.long
    rng = random.Random(0)
    starts = [rng.randint(0, ids.numel() - 512) for _ in range(128)]
    for w, s in zip(windows, starts):
        assert torch.equal(w, ids[s:s + 512])
    assert torch.equal(windows, sample_windows(token_ids(tokenizer, load_text("builtin:pydoc")), 128, 512))


def test_lee_512_window_count(smollm2):
    _, tokenizer = smollm2
    ids = token_ids(tokenizer, load_text("builtin:lee"))
    windows = eval_windows(tokenizer, load_text("builtin:lee"), 512)
    assert windows.shape == (ids.numel() // 512, 512)
    assert torch.equal(windows[0], ids[:512]) and torch.equal(windows[-1], ids[(windows.shape[0] - 1) * 512:][:512])


def test_fp_perplexity_on_lee_windows_is_sane(smollm2):
    # BENCHMARK.md: 30.44 on the first 24 lee-512 windows; the first two alone are in the same range.
    model, tokenizer = smollm2
    windows = eval_windows(tokenizer, load_text("builtin:lee"), 512, max_windows=2)
    result = evaluate(model, windows, reference=model, progress=False)
    assert result.tokens == 2 * 511
    assert 15.0 < result.ppl < 60.0
    assert result.kl == 0.0 and result.top1 == 1.0


def test_truncated_gguf_is_an_input_error(tmp_path):
    source = resolve_source(DEFAULT_MODEL).path
    with open(source, "rb") as f:
        head = f.read(3_000_000)
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(head)
    with pytest.raises(InputError, match="truncated.gguf: cannot load as a GGUF model"):
        load_model(str(broken))
