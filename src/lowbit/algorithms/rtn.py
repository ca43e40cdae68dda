"""Round-to-nearest, optionally with a clipping search per block.

The clip search shrinks each block's range by factors on a grid and keeps, per block, the
factor with the smallest weight-reconstruction error: outliers no longer stretch the grid for
every other weight in the block. It is a pure function of the weight and the spec.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..formats import FormatSpec
from ..formats.integer import qparams_from_range, quantize_blocks, scale_dtype, to_blocks
from .levels import rtn_levels
from .quantized_weight import QuantizedWeight


@dataclass(frozen=True)
class ClipSearch:
    """Shrink factors ``linspace(1, min_ratio, grid)`` on [min, max]; error = mean |w - ŵ|^norm."""

    grid: int = 20
    min_ratio: float = 0.5
    norm: float = 2.0

    def __post_init__(self):
        if self.grid < 1 or not 0 < self.min_ratio <= 1 or not self.norm > 0:
            raise InputError(f"invalid clip search: grid {self.grid} (>= 1), min_ratio "
                             f"{self.min_ratio} (in (0, 1]), norm {self.norm} (> 0)")


def search_block_range(
    blocks: torch.Tensor, spec: FormatSpec, clip: ClipSearch, dtype: torch.dtype,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best (min, max) per block of ``blocks (rows, n, block)`` and the chosen shrink ratio.

    ``importance (block,)`` or broadcastable weights the error per input position (e.g. an
    activation magnitude); None weighs every weight equally. Ties keep the larger ratio, so
    the search never picks a clipped range that is merely as good as the full one.
    """
    b = blocks.float()
    wmin, wmax = b.amin(-1), b.amax(-1)
    best_err = torch.full(wmin.shape, float("inf"), device=b.device)
    best_ratio = torch.ones_like(wmin)
    work = torch.empty_like(b)
    for ratio in torch.linspace(1.0, clip.min_ratio, clip.grid).tolist():
        scale, zero = qparams_from_range(wmin * ratio, wmax * ratio, spec, dtype)
        err = block_error(b, scale, zero, spec, clip.norm, importance, out=work)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return wmin * best_ratio, wmax * best_ratio, best_ratio


def block_error(
    b: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: FormatSpec,
    norm: float = 2.0, importance: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum |ŵ - w|^norm`` per block of float32 ``b (rows, n, block)``: quantize + dequantize fused.

    The search's inner loop, so it works in place in float32 on one buffer: clamping
    ``round(w / s)`` to ``[-zero, qmax - zero]`` is the same as clamping the codes to
    ``[0, qmax]``, without ever forming them. A float32 quotient may round a near-tie the
    other way than the final (float64) codes do; that moves an error by ~1e-7 of a step.
    """
    s = scale.float().unsqueeze(-1)
    t = torch.div(b, s, out=out).round_()
    if zero is None:
        mid = 1 << (spec.bits - 1)
        t.clamp_(-mid, spec.qmax - mid)
    else:
        # Two one-sided clamps: a clamp with two broadcast tensor bounds is ~10x slower on CPU.
        z = zero.float().unsqueeze(-1)
        t.clamp_(min=-z).clamp_(max=spec.qmax - z)
    t.mul_(s).sub_(b)
    if norm == 2:
        t.square_()
    else:
        t.abs_().pow_(norm)
    if importance is not None:
        t.mul_(importance)
    return t.sum(-1)


def rtn(w: torch.Tensor, spec: FormatSpec, clip: ClipSearch | None = None) -> QuantizedWeight:
    """Quantize ``w (out, in)`` to the nearest grid point of ``spec``; returns codes and scales."""
    if spec.is_lookup:  # nearest level of a table (NF4, FP4): algorithms/levels.py
        return rtn_levels(w, spec, clip)
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
