"""Perplexity with a KV cache in the loop: each window is fed in chunks, so every chunk's
queries read the keys and values of the earlier chunks back from the cache under test.

A float-cache pass (transformers' DynamicCache, same chunks) is the reference: it runs in
lockstep with every cache under test, chunk by chunk, and each is compared with it (KL, top-1).
Chunked float equals the unchunked forward up to float rounding (tests check it), so ΔPPL
measures the cache alone.

How much the test exercises the quantized part: a query in a chunk sees the current chunk and the
cache's float residual in float, and only older tokens through quantized storage. Decoding sees
only the residual in float, so a chunk size well below the residual keeps the evaluation close
to decoding; ``quantized_key_share`` reports, over full-attention layers, the share of causal
(query, key) pairs whose key came from quantized storage.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..errors import InputError
from ..modules.kv_cache import KVMemory, kv_memory, quantized_length
from .compare import WindowStats, compare_logits
from .evaluate import _check_windows, _device_of, perplexity

DEFAULT_CHUNK = 32

CacheFactory = Callable[[nn.Module], object]


@dataclass
class KVEvalResult:
    """One cache's perplexity over chunked windows; ``kl``/``top1`` against the float-cache pass
    (None for that pass itself). ``memory`` is measured at the end of the last window."""

    name: str
    ppl: float
    nll_sum: float
    tokens: int
    windows: int
    seqlen: int
    chunk: int
    seconds: float
    kl: float | None = None
    top1: float | None = None
    quantized_key_share: float | None = None
    memory: KVMemory | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = self.memory.to_dict() if self.memory is not None else None
        return d


def float_cache(model: nn.Module) -> DynamicCache:
    return DynamicCache(config=model.config)


class _Run:
    """One (model, cache) pair walking a window chunk by chunk."""

    def __init__(self, name: str, model: nn.Module, factory: CacheFactory):
        self.name, self.model, self.factory = name, model, factory
        self.stats = WindowStats(0.0, 0)
        self.seconds = 0.0
        self.pairs_quantized = self.pairs_total = 0
        self.memory = None

    def start_window(self) -> None:
        self.cache = self.factory(self.model)
        self.last_row = None

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits for ``ids`` (one chunk at ``start``), with the last row of the previous chunk in
        front, so that the chunk's first token is predicted too."""
        self._count_pairs(start, ids.shape[1])
        t0 = time.perf_counter()
        out = self.model(input_ids=ids.to(_device_of(self.model)), past_key_values=self.cache, use_cache=True)
        self.seconds += time.perf_counter() - t0
        logits = out.logits
        rows = logits if self.last_row is None else torch.cat([self.last_row, logits], dim=1)
        self.last_row = logits[:, -1:]
        return rows

    def _count_pairs(self, start: int, length: int) -> None:
        causal = length * start + length * (length + 1) // 2  # keys each query of the chunk sees
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_sliding", False) or not hasattr(layer, "get_seq_length"):
                continue
            self.pairs_total += causal
            self.pairs_quantized += length * quantized_length(layer)

    def result(self, windows: int, seqlen: int, chunk: int) -> KVEvalResult:
        s = self.stats
        r = KVEvalResult(self.name, perplexity(s.nll_sum, s.tokens), s.nll_sum, s.tokens, windows, seqlen,
                         chunk, round(self.seconds, 3), memory=self.memory)
        if s.kl_sum is not None:
            r.kl, r.top1 = s.kl_sum / s.tokens, s.top1_agree / s.tokens
        if self.pairs_total:
            r.quantized_key_share = self.pairs_quantized / self.pairs_total
        return r


@torch.inference_mode()
def evaluate_kv(model: nn.Module, windows: torch.Tensor, caches: Mapping[str, CacheFactory],
                chunk: int = DEFAULT_CHUNK, reference: nn.Module | None = None,
                progress: bool = True) -> tuple[KVEvalResult, dict[str, KVEvalResult]]:
    """Chunked perplexity of ``model`` with each cache of ``caches`` (name -> ``factory(model)``),
    against ``reference`` (default ``model``) with the float cache, on ``windows (n, seqlen)``.

    Returns the float-cache result and one result per cache. A fresh cache per window.
    """
    _check_windows(windows)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive number of tokens, got {chunk!r}")
    windows = windows.long()
    n, seqlen = windows.shape
    ref = _Run("float cache", reference if reference is not None else model, float_cache)
    runs = [_Run(name, model, factory) for name, factory in caches.items()]
    bar = tqdm(total=n, desc="evaluate (chunked)", unit="window", disable=not progress)
    for w in range(n):
        ids = windows[w:w + 1]
        for run in (ref, *runs):
            run.start_window()
        for start in range(0, seqlen, chunk):
            end = min(start + chunk, seqlen)
            # Targets: the chunk's tokens, plus the one before it that the carried row predicts from.
            targets = ids[:, max(start - 1, 0):end]
            ref_rows = ref.forward(ids[:, start:end], start)
            targets = targets.to(ref_rows.device)
            for run in runs:
                rows = run.forward(ids[:, start:end], start)
                run.stats += compare_logits(rows, targets, ref_rows.to(rows.device))
            ref.stats += compare_logits(ref_rows, targets)
        for run in (ref, *runs):
            run.memory = kv_memory(run.cache)
            run.cache = None
        bar.update(1)
        if runs:
            bar.set_postfix({r.name: f"{perplexity(r.stats.nll_sum, r.stats.tokens):.3f}" for r in runs[:3]})
    bar.close()
    return ref.result(n, seqlen, chunk), {run.name: run.result(n, seqlen, chunk) for run in runs}


def kv_row(result: KVEvalResult, spec=None) -> dict:
    """A report row (``eval.report.format_table``) for one chunked result; ``spec`` is the
    quantized cache's ``KVCacheSpec``, None for a float cache."""
    mem = result.memory
    row = {"name": result.name, "ppl": result.ppl, "kl": result.kl, "top1": result.top1,
           "kv_cache": spec.name if spec else None, "seqlen": result.seqlen, "kv_chunk": result.chunk,
           "kv_bytes_per_token": mem.bytes_per_token if mem else None,
           "kv_saving": mem.saving if mem else None,
           "kv_quantized_bytes_per_token": mem.quantized_bytes_per_token if mem else None,
           "kv_quantized_saving": mem.quantized_saving if mem else None,
           "kv_quantized_key_share": result.quantized_key_share}
    if spec is not None:
        row.update(kv_group_size=spec.group_size, kv_residual=spec.residual, kv_keys=spec.key_axis)
    return row


def kv_rows(base: KVEvalResult, results: Mapping[str, KVEvalResult], specs: Mapping) -> list[dict]:
    """The float-cache row first (the ΔPPL baseline), then one per result; ``specs`` maps a
    result's name to its ``KVCacheSpec`` (absent or None: a float cache)."""
    return [kv_row(base)] + [kv_row(r, specs.get(name)) for name, r in results.items()]
