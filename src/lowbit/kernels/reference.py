"""PyTorch reference kernels: dequantize, then a dense matmul. Runs on any device."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def weight_only_linear(x: torch.Tensor, module) -> torch.Tensor:
    """``x (..., in)`` times the module's dequantized weight ``(out, in)``, plus bias."""
    w = module.dequantized_weight(x.dtype)
    # The bias is stored in the scales' dtype (float16 scales give a float16 bias).
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, w, bias)
