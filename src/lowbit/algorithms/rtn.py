"""Round-to-nearest, optionally with a clipping search per block.

The clip search shrinks each block's range by factors on a grid and keeps, per block, the
factor with the smallest weight-reconstruction error: outliers no longer stretch the grid for
every other weight in the block. It is a pure function of the weight and the spec.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import FormatSpec
from ..formats.integer import (
    dequantize_blocks, qparams_from_range, quantize_blocks, scale_dtype, to_blocks,
)
from .quantized_weight import QuantizedWeight


@dataclass(frozen=True)
class ClipSearch:
    """Shrink factors ``linspace(1, min_ratio, grid)`` on [min, max]; error = mean |w - ŵ|^norm."""

    grid: int = 20
    min_ratio: float = 0.5
    norm: float = 2.0

    def __post_init__(self):
        if self.grid < 1 or not 0 < self.min_ratio <= 1 or self.norm <= 0:
            raise ValueError(f"invalid clip search {self}")


def search_block_range(
    blocks: torch.Tensor, spec: FormatSpec, clip: ClipSearch, dtype: torch.dtype,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best (min, max) per block of ``blocks (rows, n, block)`` and the chosen shrink ratio.

    ``importance (block,)`` or broadcastable weights the error per input position (e.g. an
    activation magnitude); None weighs every weight equally.
    """
    b = blocks.float()
    wmin, wmax = b.amin(-1), b.amax(-1)
    best_err = torch.full(wmin.shape, float("inf"), device=b.device)
    best_ratio = torch.ones_like(wmin)
    for ratio in torch.linspace(1.0, clip.min_ratio, clip.grid).tolist():
        lo, hi = wmin * ratio, wmax * ratio
        scale, zero = qparams_from_range(lo, hi, spec, dtype)
        err = (dequantize_blocks(quantize_blocks(b, scale, zero, spec), scale, zero, spec) - b)
        err = err.abs_().pow_(clip.norm)
        if importance is not None:
            err = err * importance
        err = err.sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return wmin * best_ratio, wmax * best_ratio, best_ratio


def rtn(w: torch.Tensor, spec: FormatSpec, clip: ClipSearch | None = None) -> QuantizedWeight:
    """Quantize ``w (out, in)`` to the nearest grid point of ``spec``; returns codes and scales."""
    blocks = to_blocks(w, spec)
    dtype = scale_dtype(spec, w.dtype)
    if clip is None:
        b = blocks.float()
        lo, hi, ratio = b.amin(-1), b.amax(-1), None
    else:
        lo, hi, ratio = search_block_range(blocks, spec, clip, dtype)
    scale, zero = qparams_from_range(lo, hi, spec, dtype)
    codes = quantize_blocks(blocks, scale, zero, spec).reshape(w.shape)
    stats = {}
    if ratio is not None:
        stats["clip_ratio_mean"] = float(ratio.mean())
    return QuantizedWeight(codes, scale, zero, spec, stats)
