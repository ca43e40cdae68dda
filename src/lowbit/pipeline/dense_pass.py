"""Run a quantized block's weight-only layers on weights dequantized once, not once per batch.

After a block is rounded, the walk runs it on every calibration batch to make the next block's
inputs. On a CPU each weight-only layer's forward is the reference kernel: dequantize the
whole weight, then ``F.linear``; with 32 batches that unpacks every weight 32 times. Inside
``dequantized_once`` each such layer dequantizes once and reuses the dense weight for every
batch, computing exactly what the reference kernel computes (the same dequantized weight, the
same ``F.linear``), so the next block's inputs are bit-identical. On an accelerator the layer's
own dispatched kernel keeps running: there the walk's results should be what inference runs.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.quant_linear import QuantLinear


@contextlib.contextmanager
def dequantized_once(block: nn.Module, enabled: bool = True):
    """Within, every ``QuantLinear`` of ``block`` dequantizes its weight on its first call (per
    input dtype) and reuses it; the dense copies are freed on exit."""
    layers = [m for m in block.modules() if type(m) is QuantLinear] if enabled else []
    try:
        for m in layers:
            m.forward = _dense_forward(m)
        yield
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


def _dense_forward(m: QuantLinear):
    dense: dict[torch.dtype, tuple] = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in dense:
            # As the reference kernel does: the bias is stored in the scales' dtype.
            dense[x.dtype] = (m.dequantized_weight(x.dtype), None if m.bias is None else m.bias.to(x.dtype))
        return F.linear(x, *dense[x.dtype])
    return forward
