"""``online_hadamard`` on one decoder block: each target linear's weight ``W → W Q`` (float64,
cast back), and the layer rotates its inputs by ``Q`` at run time (``modules/input_hadamard.py``),
so the float block computes what it computed before, up to rounding."""
from __future__ import annotations

import torch

from ..algorithms.online_hadamard import OnlineHadamardConfig
from ..arch import get_module
from ..errors import InputError
from ..algorithms.hadamard import random_signs, randomized_hadamard
from ..modules.input_hadamard import attach_input_hadamard
from ..quantize import linear_weight
from .act_stats import group_input_absmax
from .hessians import linear_in_features
from .transforms import BlockContext, TransformResult, register_block_transform


def target_paths(step: OnlineHadamardConfig, ctx: BlockContext) -> list[str]:
    """Block-relative paths of the linears to rotate: those the step names (by default the block's
    last input group) that this run quantizes. A linear left in float keeps its plain input, since
    only quantized layers carry the rotation into a checkpoint."""
    if not step.linears:
        named = list(ctx.arch.groups[-1].linears)
    else:
        named = [p for p in ctx.arch.linears if any(p == t or p.endswith("." + t) for t in step.linears)]
        if not named:
            raise InputError(f"online_hadamard: no linear of block {ctx.index} matches {list(step.linears)} "
                             f"(its linears: {', '.join(ctx.arch.linears)})")
    return [p for p in named if p in ctx.wanted and get_module(ctx.block, p) is not None]


@register_block_transform(OnlineHadamardConfig)
@torch.no_grad()
def online_hadamard_block(step: OnlineHadamardConfig, ctx: BlockContext, keep_outputs: bool = False) -> TransformResult:
    if ctx.arch.conv1d:
        raise InputError("online_hadamard: Conv1D (GPT-2 style) layers are not supported")
    rows = []
    for path in target_paths(step, ctx):
        module = get_module(ctx.block, path)
        n = linear_in_features(module, False)
        signs = random_signs(n, step.seed + ctx.index)
        Q = randomized_hadamard(signs).to(module.weight.device)
        W = linear_weight(module, False)
        W.copy_((W.to(torch.float64) @ Q).to(W.dtype))
        attach_input_hadamard(module, signs)
        rows.append({"step": "online_hadamard", "block": ctx.index, "linear": path, "n": n,
                     "seed": step.seed + ctx.index})
    outputs = None
    if keep_outputs:  # the float block is unchanged: its outputs are the next block's inputs
        _, outputs = group_input_absmax(ctx.block, ctx.index, [], ctx.inputs, ctx.device, True, ctx.hidden_device)
    return TransformResult(rows, outputs)


@torch.no_grad()
def rotate_down_inputs(model, config: OnlineHadamardConfig = OnlineHadamardConfig()) -> list[dict]:
    """The step alone on a float ``model`` in place (no calibration needed); one row per linear."""
    from ..arch import arch_for, blocks_of

    arch = arch_for(model)
    device = next(model.parameters()).device
    rows = []
    for i, block in enumerate(blocks_of(model, arch)):
        ctx = BlockContext(block, i, arch, None, device, recipe=None, wanted=arch.linears)
        rows += online_hadamard_block(config, ctx, keep_outputs=False).rows
    return rows
