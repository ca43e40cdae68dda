"""``lowbit compare``: several models (any format lowbit reads) on the same windows, one table.

Each model is loaded once, and every window runs through the reference first and then through
each model, which is compared with it by the evaluator's own arithmetic
(:func:`lowbit.eval.compare_logits`); so the numbers are what ``lowbit eval --reference`` gives
per model, for one reference pass. All models are held in memory at once.

Windows are cut with the reference's tokenizer (the first model's when no reference is given).
Every other tokenizer must split a probe of the text into the same ids, or the comparison is
refused: perplexities over different token streams do not compare.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from .compare import WindowStats, compare_logits
from .evaluate import perplexity

PROBE_CHARS = 4000


@dataclass
class Candidate:
    name: str
    model: nn.Module
    tokenizer: object
    size_mb: float | None
    bits_per_weight: float | None


def load_candidate(path: str) -> Candidate:
    """A checkpoint (lowbit, compressed-tensors, GPTQ, AWQ, GGUF) or any model source."""
    from ..io import inspect_checkpoint, is_quantized_checkpoint, load
    from ..sources import load_model, resolve_source
    from .size import checkpoint_size_mb

    if is_quantized_checkpoint(path):
        model, tokenizer = load(path)
        info = inspect_checkpoint(path)
        return Candidate(path, model, tokenizer, info["size_bytes"] / 1e6, info["bits_per_weight"])
    model, tokenizer = load_model(path)
    where = resolve_source(path)
    size = checkpoint_size_mb(where.path) if where.kind != "hub" else None
    bits = None
    if where.kind == "gguf":
        from ..io.export import inspect_gguf
        bits = inspect_gguf(Path(where.path))["bits_per_weight"]
    if bits is None:
        bits = 8.0 * next(model.parameters()).element_size()
    return Candidate(path, model, tokenizer, size, bits)


def _check_tokenizers(candidates: list[Candidate], text: str) -> None:
    probe = text[:PROBE_CHARS]
    base = next(c for c in candidates if c.tokenizer is not None)
    want = base.tokenizer(probe, add_special_tokens=False)["input_ids"]
    for c in candidates:
        if c.tokenizer is not None and c.tokenizer(probe, add_special_tokens=False)["input_ids"] != want:
            raise InputError(f"{c.name} tokenizes the text differently from {base.name}: "
                             f"their perplexities would not compare")


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


@torch.inference_mode()
def compare_models(paths: list[str], text_source: str, reference: str | None = None, seqlen: int = 512,
                   max_windows: int | None = None, progress: bool = True) -> dict:
    """Rows ``{name, ppl, kl, top1, size_mb, bits_per_weight}``: the reference first (the first
    path when ``reference`` is None), then every other model; KL and top-1 are against it."""
    from ..data.text import load_text
    from ..data.windows import eval_windows

    if not paths:
        raise InputError("compare needs at least one model")
    names = ([reference] if reference else []) + [p for p in paths if p != reference]
    if len(set(names)) != len(names):
        raise InputError("compare: a model is named twice")
    candidates = [load_candidate(p) for p in tqdm(names, desc="load", unit="model", disable=not progress)]
    if all(c.tokenizer is None for c in candidates):
        raise InputError("compare: none of the models has a tokenizer to cut the text with")
    text = load_text(text_source)
    _check_tokenizers(candidates, text)
    tokenizer = next(c.tokenizer for c in candidates if c.tokenizer is not None)
    windows = eval_windows(tokenizer, text, seqlen, max_windows=max_windows).long()
    ref, others = candidates[0], candidates[1:]
    totals = {c.name: WindowStats(0.0, 0) for c in candidates}
    start = time.perf_counter()
    for i in tqdm(range(windows.shape[0]), desc="compare", unit="window", disable=not progress):
        ids = windows[i:i + 1]
        ref_logits = _logits(ref.model, ids)
        totals[ref.name] += compare_logits(ref_logits, ids)
        for c in others:
            totals[c.name] += compare_logits(_logits(c.model, ids), ids, ref_logits)
    rows = []
    for c in candidates:
        s = totals[c.name]
        rows.append({"name": c.name, "ppl": perplexity(s.nll_sum, s.tokens),
                     "kl": None if s.kl_sum is None else s.kl_sum / s.tokens,
                     "top1": None if s.top1_agree is None else s.top1_agree / s.tokens,
                     "size_mb": c.size_mb, "bits_per_weight": c.bits_per_weight})
    return {"text": text_source, "reference": ref.name, "windows": int(windows.shape[0]), "seqlen": seqlen,
            "tokens": totals[ref.name].tokens, "seconds": round(time.perf_counter() - start, 2), "rows": rows}
