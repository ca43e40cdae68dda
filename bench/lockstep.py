"""Evaluate many models against one float reference in lockstep, one reference pass for all.

``lowbit.eval.evaluate`` runs the reference beside the one model it evaluates; for a table of a
dozen rows that would run the float model a dozen times. Here each window goes through the
reference once and then through every candidate, and each candidate's statistics come from
``lowbit.eval.compare_logits``, the evaluator's own arithmetic, so the numbers are exactly
what ``evaluate(model, windows, reference)`` gives, per model, at a fraction of the cost.
"""
from __future__ import annotations

import sys
import time

import torch
from torch import nn

from lowbit.eval import WindowStats, compare_logits, perplexity


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


@torch.inference_mode()
def evaluate_lockstep(reference: nn.Module, candidates: dict[str, nn.Module],
                      windows: torch.Tensor, label: str = "", log_every: int = 10) -> dict[str, dict]:
    """Statistics per model on ``windows (n, seqlen)``; the reference's own under key ``None``.

    Returns ``{name: {"ppl", "nll_sum", "tokens", "windows", "kl", "top1", "seconds"}}`` (kl and
    top1 against the reference; None for the reference itself). ``seconds`` is the time spent in
    that model's forward passes and comparisons.
    """
    windows = windows.long()
    n = windows.shape[0]
    totals = {name: WindowStats(0.0, 0) for name in [None, *candidates]}
    seconds = dict.fromkeys(totals, 0.0)
    start = time.perf_counter()
    for i in range(n):
        ids = windows[i:i + 1]
        t = time.perf_counter()
        ref_logits = _logits(reference, ids)
        totals[None] += compare_logits(ref_logits, ids)
        seconds[None] += time.perf_counter() - t
        for name, model in candidates.items():
            t = time.perf_counter()
            totals[name] += compare_logits(_logits(model, ids), ids, ref_logits)
            seconds[name] += time.perf_counter() - t
        if log_every and ((i + 1) % log_every == 0 or i + 1 == n):
            elapsed = time.perf_counter() - start
            eta = elapsed / (i + 1) * (n - i - 1)
            print(f"[{label}] window {i + 1}/{n}  {elapsed:.0f}s elapsed, ~{eta:.0f}s left",
                  file=sys.stderr, flush=True)
    out = {}
    for name, s in totals.items():
        out[name] = {
            "ppl": perplexity(s.nll_sum, s.tokens), "nll_sum": s.nll_sum, "tokens": s.tokens,
            "windows": n, "seconds": round(seconds[name], 2),
            "kl": None if s.kl_sum is None else s.kl_sum / s.tokens,
            "top1": None if s.top1_agree is None else s.top1_agree / s.tokens,
        }
    return out
