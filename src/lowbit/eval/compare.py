"""Per-window quality statistics from logits: the pure arithmetic behind the evaluator.

For windows ``ids (B, T)`` the model predicts tokens ``1..T-1`` from positions ``0..T-2``, so
each window gives ``T-1`` predictions. Log-probabilities are taken in float32 and summed in
float64, so sums over a hundred thousand tokens do not drift.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WindowStats:
    """Sums over the predicted positions of some windows (None where no reference was given)."""

    nll_sum: float
    tokens: int
    ref_nll_sum: float | None = None
    kl_sum: float | None = None
    top1_agree: int | None = None

    def __iadd__(self, other: "WindowStats") -> "WindowStats":
        self.nll_sum += other.nll_sum
        self.tokens += other.tokens
        if other.kl_sum is not None:
            self.ref_nll_sum = (self.ref_nll_sum or 0.0) + other.ref_nll_sum
            self.kl_sum = (self.kl_sum or 0.0) + other.kl_sum
            self.top1_agree = (self.top1_agree or 0) + other.top1_agree
        return self


def compare_logits(logits: torch.Tensor, ids: torch.Tensor,
                   ref_logits: torch.Tensor | None = None) -> WindowStats:
    """Statistics of ``logits (B, T, V)`` for ``ids (B, T)``, and against ``ref_logits`` if given.

    KL is KL(P_ref || P) per position: how much the model's next-token distribution lost
    relative to the reference's, weighted by where the reference puts its mass.
    """
    targets = ids[:, 1:].unsqueeze(-1)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll_sum = -logp.gather(-1, targets).double().sum().item()
    stats = WindowStats(nll_sum, targets.numel())
    if ref_logits is None:
        return stats
    ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    stats.ref_nll_sum = -ref_logp.gather(-1, targets).double().sum().item()
    # Sum over the vocabulary per position first (float32 is exact enough for one distribution).
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    stats.kl_sum = kl.double().sum().item()
    stats.top1_agree = int((logp.argmax(-1) == ref_logp.argmax(-1)).sum().item())
    return stats
