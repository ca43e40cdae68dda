"""SmoothQuant on one decoder block: per-channel input absmax of every smoothable group, one
scale per group, folded into the group's feeder.

One forward of the float block gives every group's statistic. All scales are computed from the
unfolded block (statistics and weights) and folded afterwards, as the paper's code does:
folding one group never changes another group's input, but it does rescale weights that
another group's scale reads (v's rows for o, v's columns for q/k/v), so the order would
otherwise matter.
"""
from __future__ import annotations

import torch

from ..algorithms.smoothquant import SmoothQuantConfig, smoothing_scale
from ..arch import LinearGroup, get_module
from ..quantize import linear_weight
from .act_stats import group_input_absmax
from .folding import channel_tie, fold_scale
from .hessians import linear_in_features
from .transforms import BlockContext, TransformResult, register_block_transform


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def smoothable(step: SmoothQuantConfig, g: LinearGroup) -> bool:
    if g.feeder_kind == "none":
        return False
    return step.linear_feeders or g.feeder_kind != "linear"


@torch.no_grad()
def weight_column_absmax(block, g: LinearGroup, conv1d: bool) -> torch.Tensor:
    """``max |W_j|`` over every output row of every linear of the group, per input column."""
    cols = [_at_least_float32(linear_weight(get_module(block, p), conv1d).detach().abs().amax(0)) for p in g.linears]
    return torch.stack(cols).amax(0)


@register_block_transform(SmoothQuantConfig)
def smoothquant_block(step: SmoothQuantConfig, ctx: BlockContext, keep_outputs: bool = False) -> TransformResult:
    block, conv1d = ctx.block, ctx.arch.conv1d
    groups = [g for g in ctx.arch.groups if smoothable(step, g) and get_module(block, g.linears[0]) is not None]
    absmax, outputs = group_input_absmax(block, ctx.index, [g.linears for g in groups], ctx.inputs,
                                         ctx.device, keep_outputs, ctx.hidden_device)
    plans = []
    for g, act in zip(groups, absmax):
        in_features = linear_in_features(get_module(block, g.linears[0]), conv1d)
        tie = channel_tie(block, g, in_features)
        s = smoothing_scale(act, weight_column_absmax(block, g, conv1d), step.alpha, tie)
        plans.append((g, act, tie, s))
    rows = []
    for g, act, tie, s in plans:
        fold_scale(block, g, s, conv1d, tie)  # float64 s: fold_scale rounds it to each weight's dtype
        s_in = s if tie is None else s[tie.to(s.device)]
        rows.append({"step": "smoothquant", "block": ctx.index, "feeder": g.feeder, "linears": list(g.linears),
                     "alpha": step.alpha, "act_absmax_before": float(act.max()),
                     "act_absmax_after": float((act.double() / s_in).max()),
                     "scale_min": float(s.min()), "scale_max": float(s.max())})
    return TransformResult(rows, outputs)


@torch.no_grad()
def smooth_model(model, calib, config: SmoothQuantConfig = SmoothQuantConfig(), batch_size: int = 8) -> list[dict]:
    """SmoothQuant alone: fold the scales into a float ``model`` in place (no rounding), block by
    block on calibration token ids ``calib``; returns one row per smoothed group."""
    from ..arch import arch_for, blocks_of
    from .capture import calibration_batches, capture_block_inputs

    arch = arch_for(model)
    device = next(model.parameters()).device
    inputs = capture_block_inputs(model, arch, calibration_batches(calib, batch_size), device)
    rows = []
    for i, block in enumerate(blocks_of(model, arch)):
        ctx = BlockContext(block, i, arch, inputs, device, recipe=None, wanted=arch.linears)
        result = smoothquant_block(config, ctx, keep_outputs=True)
        inputs.hidden = result.outputs
        rows += result.rows
    return rows
