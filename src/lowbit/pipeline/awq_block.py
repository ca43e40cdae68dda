"""AWQ on one decoder block: input statistics per group, scale search, folding, clipping search.

One forward of the float block over the calibration batches records, for every input group of
the architecture table (q/k/v, o, gate/up, down), the mean ``|x|`` per channel over every token
and the Gram matrix ``E[x xᵀ]`` over a seeded sample of tokens. Folding a group's scale divides
that group's input by ``s`` and changes nothing else the other groups read, so these statistics,
taken once on the float block, stay valid for every group in turn (the scaled group's Gram matrix
is ``Σ / (s sᵀ)``); the block runs once, not once per group or per candidate.

The loss of a candidate is the group's output error, exact under the Gram matrix (``gram_loss``).
For the attention input group that is the error of the q, k and v outputs, not of the attention
output the paper measures: see docs/AWQ.md for why (no re-run of attention per candidate, no
architecture-specific attention call, and the Gram form prices a candidate at ``out·in²`` whatever
the number of tokens).

Order, as the paper's code does it: every group's scale is searched and folded in table order
(q/k/v, v → o, gate/up, up → down), then every block's range is searched on the final scaled
weights. Groups whose feeder cannot absorb a scale (``none``) are reported as skipped and only
get the clipping search. The chosen ranges clip the weights in place, except before a rounder
that compensates rounding error (GPTQ, ``takes_ranges``): it gets the clipped weights' ranges
and rounds the unclipped ones, so their clipping error is compensated too.
"""
from __future__ import annotations

import time

import torch

from ..algorithms.awq import expand, fake_quantize, gram_loss, search_clip, search_scales
from ..algorithms.awq_step import AWQConfig
from ..algorithms.gptq import fp32_highest
from ..algorithms.registry import rounder_for
from ..arch import LinearGroup, get_module
from ..quantize import linear_weight
from .capture import run_block, to_hidden_device
from .folding import channel_tie, fold_scale
from .hessians import linear_in_features
from .rounding import RANGE_WEIGHT
from .transforms import BlockContext, TransformResult, register_block_transform

SKIP_NONE = ("the op feeding these linears cannot absorb a scale (feeder kind 'none': non-linear, "
             "outside the block, or its output is also the residual stream); no scale searched")


class InputStats:
    """Running mean ``|x|`` per channel (every token) and ``Σ x xᵀ`` (sampled tokens) of one input."""

    def __init__(self, in_features: int, device):
        self.abs_sum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0
        self.gram_sum = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n_gram = 0

    def add(self, x: torch.Tensor, rows: torch.Tensor | None) -> None:
        x = x.reshape(-1, x.shape[-1])
        # float32 sums: torch reduces pairwise, so 65k tokens lose no digit that matters here.
        self.abs_sum += x.abs().sum(0, dtype=torch.float32)
        self.n += x.shape[0]
        xs = (x if rows is None else x[rows]).float()
        with fp32_highest():
            self.gram_sum.addmm_(xs.t(), xs)
        self.n_gram += xs.shape[0]

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    def gram(self) -> torch.Tensor:
        return self.gram_sum / max(self.n_gram, 1)


@torch.no_grad()
def collect_input_stats(ctx: BlockContext, groups: list[LinearGroup], loss_tokens: int | None,
                        seed: int, keep_outputs: bool):
    """Statistics of every group's input on the float block; with ``keep_outputs``, also the
    block's outputs per batch (on ``ctx.hidden_device``)."""
    block, conv1d = ctx.block, ctx.arch.conv1d
    stats, handles = [], []
    total = ctx.inputs.n_tokens
    fraction = 1.0 if loss_tokens is None else min(1.0, loss_tokens / total)
    gen = torch.Generator().manual_seed(seed)
    sample: dict[str, torch.Tensor | None] = {"rows": None}
    for g in groups:
        module = get_module(block, g.linears[0])
        st = InputStats(linear_in_features(module, conv1d), ctx.device)
        stats.append(st)
        handles.append(module.register_forward_pre_hook(lambda _m, args, st=st: st.add(args[0], sample["rows"])))
    outputs = [] if keep_outputs else None
    try:
        for b, hidden in enumerate(ctx.inputs.hidden):
            n = hidden.shape[0] * hidden.shape[1]
            if fraction < 1.0:
                # The same sampled tokens for every group of the batch, drawn afresh per batch.
                k = max(1, round(fraction * n))
                sample["rows"] = torch.randperm(n, generator=gen)[:k].to(ctx.device)
            args, kwargs = ctx.inputs.call(b, ctx.index)
            out = run_block(block, hidden.to(ctx.device), args, kwargs)
            if outputs is not None:
                outputs.append(to_hidden_device(out, ctx.hidden_device or ctx.device))
    finally:
        for h in handles:
            h.remove()
    return stats, outputs


def _group_name(ctx: BlockContext, g: LinearGroup, linears: list[str]) -> str:
    feeder = g.feeder or "(block input)"
    return f"{ctx.prefix}{feeder} -> {', '.join(p.rpartition('.')[2] for p in linears)}"


@register_block_transform(AWQConfig)
@torch.no_grad()
def awq_block(step: AWQConfig, ctx: BlockContext, keep_outputs: bool = False) -> TransformResult:
    block, conv1d = ctx.block, ctx.arch.conv1d
    groups = [g for g in ctx.arch.groups if any(p in ctx.wanted for p in g.linears)]
    stats, outputs = collect_input_stats(ctx, groups, step.loss_tokens, step.seed + ctx.index, keep_outputs)
    rows, scales = [], []
    # A later group's fold divides an earlier group's linear rows (v's by o's scale, up's by
    # down's); the clip phase measures those rows' errors times this factor, in the units their
    # own scale search used, so its losses compare with ``loss_rtn``.
    row_scale: dict[str, torch.Tensor] = {}
    for g, st in zip(groups, stats):
        start = time.perf_counter()
        linears = [p for p in g.linears if p in ctx.wanted]
        row = {"step": "awq", "block": ctx.index, "group": _group_name(ctx, g, linears),
               "feeder_kind": g.feeder_kind, "tokens": st.n, "loss_tokens": st.n_gram}
        rows.append(row)
        if g.feeder_kind == "none":
            row["skipped"] = SKIP_NONE
            scales.append(None)
            continue
        weights = [linear_weight(get_module(block, p), conv1d) for p in linears]
        specs = [ctx.recipe.format_for(ctx.prefix + p) for p in linears]
        reference = torch.cat([w.float() for w in weights])
        gram = st.gram()
        tie = channel_tie(block, g, reference.shape[1])
        tie = tie.to(ctx.device) if tie is not None else None
        result = search_scales(weights, specs, st.mean_abs(), lambda w_hat: gram_loss(w_hat - reference, gram),
                               step.grid, step.duo, tie)
        if result.alpha is not None:
            fold_scale(block, g, result.scale, conv1d, tie)
            if g.feeder_kind == "linear" and g.feeder in ctx.wanted:
                out_f = linear_weight(get_module(block, g.feeder), conv1d).shape[0]
                factor = row_scale.setdefault(g.feeder, torch.ones(out_f, device=ctx.device))
                factor[out_f - result.scale.shape[0]:] *= result.scale
        s_in = expand(result.scale, tie)
        scales.append(s_in if result.alpha is not None else None)
        row.update(alpha=result.alpha, duo=step.duo, loss_rtn=result.loss_rtn, loss_scaled=result.loss,
                   scale_min=float(s_in.min()), scale_max=float(s_in.max()),
                   seconds=round(time.perf_counter() - start, 3))
    if step.clip is not None:
        for g, st, s_in, row in zip(groups, stats, scales, rows):
            start = time.perf_counter()
            _clip_group(step, ctx, g, st.gram(), s_in, row, row_scale)
            row["seconds"] = round(row.get("seconds", 0.0) + time.perf_counter() - start, 3)
    return TransformResult(rows, outputs)


def _clip_group(step: AWQConfig, ctx: BlockContext, g: LinearGroup, gram: torch.Tensor,
                s_in: torch.Tensor | None, row: dict, row_scale: dict[str, torch.Tensor]) -> None:
    """Clip every block of the group's (scaled) weights in place; record loss before and after.

    A row factor (see ``awq_block``) scales a row's whole error, so it cannot change which ratio
    is best for any block of that row: the search ignores it, the reported losses include it.
    """
    if s_in is not None:
        gram = gram / (s_in.unsqueeze(1) * s_in.unsqueeze(0))
    linears = [p for p in g.linears if p in ctx.wanted]
    takes_ranges = rounder_for(ctx.recipe.rounder.to_dict()["method"]).takes_ranges
    before, after, ratios = [], [], []
    for p in linears:
        w = linear_weight(get_module(ctx.block, p), ctx.arch.conv1d)
        spec = ctx.recipe.format_for(ctx.prefix + p)
        reference = w.detach().float().clone()
        clipped, ratio, _, _ = search_clip(w.detach(), gram, spec, step.clip)
        if takes_ranges:  # the rounder rounds the unclipped weights within the chosen ranges
            setattr(get_module(ctx.block, p), RANGE_WEIGHT, clipped)
        else:
            w.copy_(clipped)
        # Full output error of the rounded weights against the unclipped float ones (the
        # search's own loss ignores the error shared between blocks of a row).
        f = row_scale.get(p, torch.ones(w.shape[0], device=reference.device)).unsqueeze(1)
        before.append(gram_loss(f * (fake_quantize(reference, spec) - reference), gram) * w.shape[0])
        after.append(gram_loss(f * (fake_quantize(clipped, spec) - reference), gram) * w.shape[0])
        ratios.append(ratio.flatten())
    rows_total = sum(linear_weight(get_module(ctx.block, p), ctx.arch.conv1d).shape[0] for p in linears)
    row.update(clip_ratio_mean=float(torch.cat(ratios).mean()), loss_unclipped=sum(before) / rows_total,
               loss_clipped=sum(after) / rows_total)
