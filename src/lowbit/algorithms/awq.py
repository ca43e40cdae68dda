"""AWQ (Lin et al., 2023): scale the input channels that large activations multiply before rounding.

For linears ``W (out, in)`` that read one input ``x``, ``W x = (W diag(s)) (x / s)``: multiplying a
column by ``s > 1`` spreads that channel over more grid steps of its block, so its rounding error,
relative to the weight, shrinks by about ``s`` (the block's scale barely moves while one column is
one of ``group_size``). The inverse ``1 / s`` is folded into whatever produces ``x`` (a norm's
weight, the previous linear's rows), so the float model is unchanged. Channels with large mean
``|x|`` matter most to the output, so ``s = s_x^α`` (the "duo" variant: ``s_x^α / s_w^(1−α)``,
with ``s_w`` the weights' normalised magnitude per input channel), and ``α`` is searched on a grid
to minimise the group's output error. Then each block's range is shrunk on a grid, again judged by
the output error of the scaled weights.

Pure functions of weights, statistics and a format spec; they know nothing of models. The output
error is the caller's callable, so it can be exact over every calibration token (a Gram matrix,
:func:`gram_loss`) or measured on a sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import InputError
from ..formats import FormatSpec
from ..formats import levels as level_codec
from ..formats.integer import dequantize_blocks, qparams_from_range, quantize_blocks, scale_dtype, to_blocks
from .gptq import fp32_highest
from .levels import rtn_levels
from .rtn import ClipSearch

# Floors of the scale formula, as in the paper's code: a dead channel (mean |x| = 0) or an all-zero
# column gets a tiny finite scale instead of 0 or inf.
_FLOOR = 1e-4


@dataclass
class ScaleResult:
    """``scale (n_params,)``: the chosen scale per scale parameter (see ``tie`` in :func:`search_scales`);
    ``alpha``: its exponent (None when no candidate beat the unscaled weights, so ``scale`` is 1);
    ``loss_rtn`` / ``loss``: the loss of the unscaled and of the chosen weights; ``losses``: per α."""

    scale: torch.Tensor
    alpha: float | None
    loss_rtn: float
    loss: float
    losses: list[float] = field(default_factory=list)


def fake_quantize(w: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """``w (out, in)`` rounded to the nearest point of ``spec``'s min-max grid, dequantized to float32.

    The same codes and scales as ``rtn(w, spec)`` (no clipping), without building the result object;
    lookup-table formats (NF4, FP4) round to their levels, double-quantized scales included.
    """
    if spec.is_lookup:
        return rtn_levels(w, spec).dequantize(torch.float32)
    blocks = to_blocks(w, spec)
    b = blocks.float()
    scale, zero = qparams_from_range(b.amin(-1), b.amax(-1), spec, scale_dtype(spec, w.dtype))
    codes = quantize_blocks(blocks, scale, zero, spec)
    return dequantize_blocks(codes, scale, zero, spec, torch.float32).reshape(w.shape)


def weight_magnitude(weights: Sequence[torch.Tensor], specs: Sequence[FormatSpec]) -> torch.Tensor:
    """Mean over output rows of ``|w| / max |w|`` of its block, per input channel ``(in,)``.

    Normalising by the block maximum puts weights in the units their rounding error is measured in
    (steps of the block's grid): the "duo" variant divides the scale by this.
    """
    rows, total = 0, None
    for w, spec in zip(weights, specs):
        blocks = to_blocks(w.float().abs(), spec)
        norm = (blocks / (blocks.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape)
        part = norm.sum(0)
        total = part if total is None else total + part
        rows += w.shape[0]
    return total / rows


def candidate_scale(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``s = x_mean^α`` (or ``x_mean^α / w_mean^(1−α)``), normalised so that ``max(s)·min(s) = 1``.

    The normalisation centres the scales around 1 on a log scale: only their ratios matter to the
    output, and keeping them near 1 keeps the folded feeder and the scaled weights in range.
    """
    x = x_mean.float().clamp_min(0)
    if w_mean is None:
        s = x.pow(alpha).clamp_min(_FLOOR)
    else:
        s = (x.pow(alpha) / (w_mean.float().pow(1 - alpha) + _FLOOR)).clamp_min(_FLOOR)
    s = s / (s.max() * s.min()).sqrt()
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def tied_mean(v: torch.Tensor, tie: torch.Tensor | None, n_params: int) -> torch.Tensor:
    """Average ``v (in,)`` over the input channels that share one scale parameter (``tie[c]``)."""
    if tie is None:
        return v
    sums = torch.zeros(n_params, dtype=v.dtype, device=v.device).index_add_(0, tie, v)
    counts = torch.zeros(n_params, dtype=v.dtype, device=v.device).index_add_(0, tie, torch.ones_like(v))
    return sums / counts


def expand(scale: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """The scale of every input channel from the scale of every parameter."""
    return scale if tie is None else scale[tie]


def search_scales(
    weights: Sequence[torch.Tensor], specs: Sequence[FormatSpec], x_mean: torch.Tensor,
    loss: Callable[[torch.Tensor], float], grid: int = 20, duo: bool = False,
    tie: torch.Tensor | None = None,
) -> ScaleResult:
    """Grid search of ``α ∈ linspace(0, 1, grid)`` for linears that share one input.

    ``weights``: each ``(out_k, in)``, rounded with ``specs[k]``; ``x_mean (in,)``: mean ``|x|`` per
    input channel; ``loss(W_hat)``: the group's output error of the stacked effective weights
    ``W_hat = Q(W diag(s)) diag(s)⁻¹ (Σ out_k, in)`` (float32), which the caller measures against
    the float outputs. ``tie (in,)``: optional index of the scale parameter each input channel
    uses (channels that must share a scale, e.g. the query heads reading one value head); the
    statistics are averaged over tied channels. The unscaled weights (plain round-to-nearest) are
    always a candidate, so the result's loss never exceeds ``loss_rtn``.
    """
    if grid < 1:
        raise InputError(f"AWQ grid must have at least one point, got {grid}")
    in_f = x_mean.shape[0]
    if any(w.shape[1] != in_f for w in weights):
        raise InputError(f"AWQ: every weight must have {in_f} input channels (x_mean's length)")
    n_params = int(tie.max()) + 1 if tie is not None else in_f
    x = tied_mean(x_mean.float(), tie, n_params)
    w_mean = tied_mean(weight_magnitude(weights, specs), tie, n_params) if duo else None
    float_w = [w.float() for w in weights]

    def evaluate(s_in: torch.Tensor | None) -> float:
        parts = []
        for w, spec in zip(float_w, specs):
            parts.append(fake_quantize(w, spec) if s_in is None else fake_quantize(w * s_in, spec) / s_in)
        return float(loss(torch.cat(parts) if len(parts) > 1 else parts[0]))

    loss_rtn = evaluate(None)
    best = ScaleResult(torch.ones(n_params, device=x.device), None, loss_rtn, loss_rtn)
    for alpha in [k / (grid - 1) for k in range(grid)] if grid > 1 else [0.0]:
        s = candidate_scale(x, w_mean, alpha)
        value = evaluate(expand(s, tie))
        best.losses.append(value)
        # Strictly better only: ties keep the smaller α (or no scaling at all).
        if value < best.loss:
            best.scale, best.alpha, best.loss = s, alpha, value
    return best


def gram_loss(delta: torch.Tensor, gram: torch.Tensor) -> float:
    """Mean squared output error ``E‖δ x‖² / out`` of a weight error ``delta (out, in)`` under the
    input Gram matrix ``gram = E[x xᵀ] (in, in)``: exact over every token the Gram matrix saw,
    at ``out·in²`` multiply-adds whatever the number of tokens."""
    with fp32_highest():
        d = delta.float()
        return float(((d @ gram) * d).sum() / d.shape[0])


def search_clip(
    w: torch.Tensor, gram: torch.Tensor, spec: FormatSpec, clip: ClipSearch,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Shrink every block's range of ``w (out, in)`` to minimise its output error; returns the
    clipped weights, the chosen ratio per block ``(rows, n_blocks)``, and the group-separable loss
    before and after.

    A block's output error is ``δ Σ_gg δᵀ`` over the inputs it multiplies (``Σ_gg``: that block's
    diagonal block of ``gram``), as the paper measures it per output channel and group; blocks
    are independent, so each keeps its own best ratio. Ratios ``linspace(1, clip.min_ratio,
    clip.grid)`` scale ``[min, max]`` (``[-absmax, absmax]`` for lookup-table formats); ties keep
    the larger ratio. The clipped weights are the float weights clamped to the chosen range, so
    round-to-nearest on them (min-max, or absmax) and GPTQ's static ranges reproduce exactly the
    range the search chose.
    """
    if clip.norm != 2:
        raise InputError(f"AWQ's clip search measures output error (norm 2); got norm {clip.norm}")
    out_f, in_f = w.shape
    blocks = to_blocks(w, spec).float()
    rows, n_blocks, size = blocks.shape
    if spec.group_size == 0:  # one block for the whole tensor: its error is the full quadratic form
        sub = gram.float().unsqueeze(0)
    else:
        idx = torch.arange(in_f, device=w.device).reshape(n_blocks, size)
        sub = gram.float()[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # (n_blocks, size, size)
    dtype = scale_dtype(spec, w.dtype)
    global_scale = level_codec.tensor_global_scale(w, spec) if spec.is_lookup else None  # NVFP4's
    if spec.is_lookup:
        # Lookup tables scale a block by its absmax: the range is symmetric, [-r·absmax, r·absmax].
        # Double-quantized scales are judged unrounded here: their 8-bit codes are fitted per matrix
        # once every block's ratio is known.
        wmax = blocks.abs().amax(-1)
        wmin = -wmax
    else:
        wmin, wmax = blocks.amin(-1), blocks.amax(-1)

    def rounded(ratio: torch.Tensor | float) -> torch.Tensor:
        if spec.is_lookup:
            scale = level_codec.absmax_scale(blocks, spec, dtype, ratio, global_scale)
            return level_codec.dequantize_blocks(level_codec.quantize_blocks(blocks, scale, spec), scale, spec)
        scale, zero = qparams_from_range(wmin * ratio, wmax * ratio, spec, dtype)
        return dequantize_blocks(quantize_blocks(blocks, scale, zero, spec), scale, zero, spec)

    def block_loss(ratio: torch.Tensor | float) -> torch.Tensor:
        delta = rounded(ratio) - blocks
        if spec.group_size == 0:
            delta = delta.reshape(out_f, 1, in_f)
        with fp32_highest():
            # (n_blocks, rows, size) @ (n_blocks, size, size): each block's δ Σ_gg, then · δ.
            d = delta.transpose(0, 1)
            err = (torch.bmm(d, sub) * d).sum(-1).transpose(0, 1)
        return err.sum().reshape(1, 1) if spec.group_size == 0 else err

    best_err = block_loss(1.0)
    before = float(best_err.sum() / out_f)
    best_ratio = torch.ones_like(best_err)
    for ratio in torch.linspace(1.0, clip.min_ratio, clip.grid).tolist()[1:]:
        err = block_loss(ratio)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    lo, hi = (wmin * best_ratio).unsqueeze(-1), (wmax * best_ratio).unsqueeze(-1)
    clipped = torch.maximum(torch.minimum(blocks, hi), lo).reshape(w.shape).to(w.dtype)
    return clipped, best_ratio, before, float(best_err.sum() / out_f)
