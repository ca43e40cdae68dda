"""Rounding to a lookup table's levels (NF4, FP4): block scales, RTN, and GPTQ's column rounder.

Each block's scale is its absmax over the table's largest level (``formats/levels.py``),
optionally shrunk by a per-block search, the same ``ClipSearch`` the integer RTN uses: ratios
``linspace(1, min_ratio, grid)`` of the absmax, keeping per block the one with the smallest
``sum |w − ŵ|^norm`` (a shrunk scale clips the block's few largest weights to buy finer levels
for the rest). Double-quantized formats then round the scales to their 8-bit form, and the codes
are computed against the decoded scales, so stored codes and stored scales agree. MXFP4/NVFP4
scales are coded as they are chosen (``formats/microscaling.py``); NVFP4's per-tensor global
scale is fixed from the whole matrix first and passed to every block (and to GPTQ's groups).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..formats import FormatSpec
from ..formats.double_quant import double_quantize
from ..formats.integer import scale_dtype, to_blocks
from ..formats.levels import (absmax_scale, dequantize_blocks, nearest_codes, quantize_blocks, table_for,
                              tensor_global_scale)
from .quantized_weight import QuantizedWeight

if TYPE_CHECKING:
    from .rtn import ClipSearch


def search_block_scale(blocks: torch.Tensor, spec: FormatSpec, clip: "ClipSearch", dtype: torch.dtype,
                       global_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best scale per block of ``blocks (rows, n, block)`` and the chosen ratio of the absmax.

    Ties keep the larger ratio (the plain absmax when nothing is better)."""
    b = blocks.float()
    best_err = torch.full(b.shape[:-1], float("inf"), device=b.device)
    # float64, so the final scale is built from exactly the ratio that was evaluated
    best_ratio = torch.ones(b.shape[:-1], dtype=torch.float64, device=b.device)
    for ratio in torch.linspace(1.0, clip.min_ratio, clip.grid).tolist():
        scale = absmax_scale(b, spec, dtype, ratio, global_scale)
        err = (dequantize_blocks(quantize_blocks(b, scale, spec), scale, spec) - b).abs_().pow_(clip.norm).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return absmax_scale(b, spec, dtype, best_ratio, global_scale), best_ratio


def level_scales(W: torch.Tensor, spec: FormatSpec, dtype: torch.dtype, clip: "ClipSearch | None" = None,
                 global_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale of every block of ``W (out, in)``, ``(rows, n_blocks)``, and the searched ratios.
    ``global_scale``: the whole matrix's (NVFP4), when ``W`` is part of it."""
    blocks = to_blocks(W, spec)
    if clip is None:
        return absmax_scale(blocks, spec, dtype, global_scale=global_scale), None
    return search_block_scale(blocks, spec, clip, dtype, global_scale)


def rtn_levels(w: torch.Tensor, spec: FormatSpec, clip: "ClipSearch | None" = None) -> QuantizedWeight:
    """Quantize ``w (out, in)`` to the nearest level of ``spec``'s table, block by block."""
    global_scale = tensor_global_scale(w, spec)
    scale, ratio = level_scales(w, spec, scale_dtype(spec, w.dtype), clip, global_scale)
    # Codes from the exact block scales, then (double quant) the scales coded: bitsandbytes'
    # order, so NF4 + DQ is its numbers exactly. Rounding against the decoded scales instead has
    # a slightly lower weight error but moves ~3% of the codes, and with them the perplexity by
    # chance (formats/double_quant.py); GPTQ does round against them, as it compensates each code.
    codes = quantize_blocks(to_blocks(w, spec), scale, spec).reshape(w.shape)
    dq = None
    if spec.double_quant:
        dq = double_quantize(scale)
        scale = dq.decode()
    stats = {} if ratio is None else {"clip_ratio_mean": float(ratio.mean())}
    return QuantizedWeight(codes, scale, None, spec, stats, scale_dq=dq, global_scale=global_scale)


class LevelGrid:
    """GPTQ's column rounder for lookup-table formats (the integer one is ``gptq._Grid``): the
    nearest level of ``w / scale`` from a float64 quotient, as ``formats.levels`` encodes, and the
    dequantized value as a float32 level times the float32 scale, as it decodes."""

    def __init__(self, scale: torch.Tensor, zero: None, spec: FormatSpec,
                 global_scale: torch.Tensor | None = None):
        self.scale, self.zero, self.spec, self.global_scale = scale, None, spec, global_scale
        self.levels_f = table_for(spec).values.to(device=scale.device, dtype=torch.float32)
        self.scale_d, self.scale_f = scale.double(), scale.float()

    def set_group(self, g: int, scale: torch.Tensor, zero: None) -> None:
        self.scale[:, g] = scale
        self.scale_d[:, g] = scale.double()
        self.scale_f[:, g] = scale.float()

    def round_column(self, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (as float32) and dequantized values of column ``w (out,)`` in group ``g``."""
        q = nearest_codes(w, self.scale_d[:, g], self.spec).long()
        return q.float(), self.levels_f[q] * self.scale_f[:, g]
