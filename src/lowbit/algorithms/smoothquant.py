"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before W8A8.

Per input channel ``j`` of a group of linears reading one input ``X``:
``s_j = max|X_j|^α / max|W_j|^(1−α)``; the input becomes ``X / s`` (folded into the op that
feeds the group, pipeline/folding.py) and the weights ``W · diag(s)``, so the float model is
unchanged while the channels that carry the outliers shrink by ``s`` (α = 0.5 splits the range
evenly between activations and weights; larger α moves more of it into the weights).

Channels a feeder writes once but several linear columns read (a value head read by every query
head of its group, under grouped-query attention) share one ``s``: the statistics are reduced to
those shared parameters first (``tie``), the maximum over the tied channels.

The pure part is :func:`smoothing_scale`; the block-level work (statistics on calibration data,
folding) is pipeline/smoothquant_block.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from .registry import register_transform, step_fields

# Keeps s inside float range on dead channels (an all-zero column or input); llm-compressor clamps alike.
MIN_SCALE = 1e-5


@dataclass(frozen=True)
class SmoothQuantConfig:
    """``alpha``: migration strength in [0, 1]. ``linear_feeders``: also smooth inputs produced
    by a linear (v → o, up → down); the paper smooths only inputs produced by a norm."""

    alpha: float = 0.5
    linear_feeders: bool = False

    def __post_init__(self):
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise InputError(f"smoothquant: alpha must be in [0, 1], got {self.alpha!r}")
        if not isinstance(self.linear_feeders, bool):
            raise InputError(f"smoothquant: linear_feeders must be true or false, got {self.linear_feeders!r}")

    def to_dict(self) -> dict:
        return {"method": "smoothquant", "alpha": self.alpha, "linear_feeders": self.linear_feeders}

    @classmethod
    def from_dict(cls, d: dict) -> "SmoothQuantConfig":
        d = step_fields(cls, d, "smoothquant")
        return cls(**d)


def reduce_tied(values: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """``values (in,)`` → ``(n_params,)``: the maximum over the channels sharing each parameter."""
    if tie is None:
        return values
    tie = tie.to(values.device)
    out = torch.zeros(int(tie.max()) + 1, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, tie, values, reduce="amax", include_self=False)


def smoothing_scale(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float,
                    tie: torch.Tensor | None = None) -> torch.Tensor:
    """``s (n_params,)`` from the per-input-channel ``max|X_j|`` and ``max|W_j|`` (both ``(in,)``).

    Computed in float64. A channel whose input or weight column is all zero gets ``s = 1``
    (nothing to balance)."""
    a = reduce_tied(act_absmax.double(), tie)
    w = reduce_tied(weight_absmax.double(), tie)
    s = a.pow(alpha) / w.pow(1 - alpha)
    dead = (a <= 0) | (w <= 0) | ~torch.isfinite(s)
    return torch.where(dead, torch.ones_like(s), s).clamp_(min=MIN_SCALE, max=1 / MIN_SCALE)


register_transform("smoothquant", SmoothQuantConfig)
