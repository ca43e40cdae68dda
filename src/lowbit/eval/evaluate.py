"""Perplexity, KL divergence and top-1 agreement of a model against its float reference.

The quantized model and the reference run in lockstep on the same batch of windows, and only
per-window sums are kept: logits for a whole evaluation set (windows x seqlen x vocabulary)
would not fit in memory, and nothing needs them afterwards.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from .compare import WindowStats, compare_logits


@dataclass
class EvalResult:
    """``ppl = exp(nll_sum / tokens)``; ``tokens`` counts predictions (seqlen - 1 per window).

    ``kl`` (mean per predicted token), ``top1`` (fraction of positions whose argmax agrees) and
    ``ref_ppl`` (the reference's own perplexity on the same windows) are None without a reference.
    """

    ppl: float
    nll_sum: float
    tokens: int
    windows: int
    seqlen: int
    seconds: float
    kl: float | None = None
    top1: float | None = None
    ref_ppl: float | None = None
    ref_nll_sum: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean NLL); inf rather than OverflowError for a model that is badly broken."""
    mean = nll_sum / tokens
    return math.exp(mean) if not mean >= 709.0 else math.inf  # NaN stays NaN


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids.to(_device_of(model)), use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


def _check_windows(windows: torch.Tensor) -> None:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[0] == 0:
        raise InputError(f"windows must be a non-empty (n, seqlen) tensor of token ids, got "
                         f"{tuple(getattr(windows, 'shape', ()))}")
    if windows.shape[1] < 2:
        raise InputError(f"windows of {windows.shape[1]} token(s) leave nothing to predict")


@torch.inference_mode()
def evaluate(model: nn.Module, windows: torch.Tensor, reference: nn.Module | None = None,
             batch_size: int = 1, progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on ``windows (n, seqlen)``; with ``reference``, compare against it too.

    Each window is evaluated on its own (no state carried between windows). ``reference`` may
    be ``model`` itself, in which case it runs once.
    """
    _check_windows(windows)
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    windows = windows.long()
    n, seqlen = windows.shape
    total = WindowStats(0.0, 0)
    start = time.perf_counter()
    bar = tqdm(total=n, desc="evaluate", unit="window", disable=not progress)
    for i in range(0, n, batch_size):
        ids = windows[i:i + batch_size]
        logits = _logits(model, ids)
        ref_logits = None
        if reference is not None:
            ref_logits = logits if reference is model else _logits(reference, ids).to(logits.device)
        ids = ids.to(logits.device)
        for j in range(ids.shape[0]):  # one window at a time: log-softmax temporaries are (T, V) each
            total += compare_logits(logits[j:j + 1], ids[j:j + 1],
                                    None if ref_logits is None else ref_logits[j:j + 1])
        del logits, ref_logits
        bar.update(ids.shape[0])
        bar.set_postfix(ppl=f"{perplexity(total.nll_sum, total.tokens):.3f}")
    bar.close()
    result = EvalResult(ppl=perplexity(total.nll_sum, total.tokens), nll_sum=total.nll_sum,
                        tokens=total.tokens, windows=n, seqlen=seqlen,
                        seconds=round(time.perf_counter() - start, 3))
    if reference is not None:
        result.kl = total.kl_sum / total.tokens
        result.top1 = total.top1_agree / total.tokens
        result.ref_nll_sum = total.ref_nll_sum
        result.ref_ppl = perplexity(total.ref_nll_sum, total.tokens)
    return result
