"""Fold a per-input-channel scale of a group of linears into the op that feeds them.

For linears reading one input ``x``, ``W x = (W diag(s)) (x / s)``: the linears' input columns
are multiplied by ``s`` and the feeder is changed to produce ``x / s``, so the block computes the
same function (exactly, up to one rounding per changed weight). How the feeder produces ``x / s``
is its ``feeder_kind`` in the architecture table:

- ``rmsnorm``: ``x = n(h) · w`` → ``w / s``;
- ``rmsnorm_offset`` (gemma): ``x = n(h) · (1 + w)`` → ``w' = (1 + w) / s − 1``;
- ``layernorm``: ``x = n(h) · w + b`` → ``w / s`` and ``b / s``;
- ``linear``: the feeder's trailing output rows (and bias) are divided by ``s`` (v → o, up → down,
  fc1 → fc2; v is the trailing part of a fused qkv, up of a fused gate_up). An attention output
  projection reads every value head ``num_key_value_groups`` times (grouped-query attention),
  so its channels are tied: the query heads that read one value head share that head's scale;
- ``none``: nothing can absorb the scale; callers skip such groups.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import LinearGroup, get_module
from ..errors import InputError
from ..quantize import linear_weight


def channel_tie(block: nn.Module, group: LinearGroup, in_features: int) -> torch.Tensor | None:
    """Index ``(in_features,)`` of the scale parameter each input channel of the group uses, or
    None when every channel has its own (the feeder writes each channel once).

    A ``linear`` feeder whose linears sit in an attention module with ``num_key_value_groups > 1``
    is a value projection read head-repeated: channel ``c`` belongs to query head
    ``c // head_dim``, which reads value head ``(c // head_dim) // groups``.
    """
    if group.feeder_kind != "linear":
        return None
    parent = get_module(block, group.linears[0].rpartition(".")[0]) if "." in group.linears[0] else block
    repeat = int(getattr(parent, "num_key_value_groups", 1) or 1)
    if repeat == 1:
        return None
    head_dim = int(getattr(parent, "head_dim", 0) or 0)
    if head_dim <= 0 or in_features % (head_dim * repeat):
        raise InputError(f"{group.linears[0]}: cannot tie {in_features} input channels to value heads "
                         f"(head_dim {head_dim}, {repeat} query heads per value head)")
    c = torch.arange(in_features)
    head, d = c // head_dim, c % head_dim
    return (head // repeat) * head_dim + d


@torch.no_grad()
def fold_scale(block: nn.Module, group: LinearGroup, scale: torch.Tensor, conv1d: bool = False,
               tie: torch.Tensor | None = None) -> None:
    """Multiply the group's input columns by ``scale`` (expanded through ``tie``) and divide the
    feeder's output by it. ``scale (n_params,)``: positive, one per feeder output channel."""
    if group.feeder_kind == "none":
        raise InputError(f"{group.linears}: the feeding op cannot absorb a scale (feeder kind 'none')")
    s_in = scale if tie is None else scale[tie.to(scale.device)]
    for path in group.linears:
        w = linear_weight(get_module(block, path), conv1d)
        w.mul_(s_in.to(w.device, w.dtype))
    feeder = get_module(block, group.feeder)
    if group.feeder_kind == "linear":
        w = linear_weight(feeder, conv1d)
        width = scale.shape[0]
        w[-width:].div_(scale.to(w.device, w.dtype).unsqueeze(1))
        if getattr(feeder, "bias", None) is not None:
            feeder.bias[-width:].div_(scale.to(feeder.bias.device, feeder.bias.dtype))
        return
    w = feeder.weight
    s = scale.to(w.device)
    if group.feeder_kind == "rmsnorm_offset":
        # (1 + w) / s − 1 in float64: 1 + w loses w's low bits in float32 when |w| << 1.
        w.copy_(((1 + w.double()) / s.double() - 1).to(w.dtype))
        return
    w.div_(s.to(w.dtype))
    if group.feeder_kind == "layernorm" and getattr(feeder, "bias", None) is not None:
        feeder.bias.div_(s.to(feeder.bias.dtype))
